package example.points;

import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.slf4j.MDC;

/**
 * Puts a record's saga id into the logging MDC as {@code correlationId} (printed on every
 * log line, see {@code logging.pattern.level}), so one saga can be followed by its
 * correlation id across the services' logs.
 */
final class Correlation {
    static final String MDC_KEY = "correlationId";

    private Correlation() {}

    /** Sets the MDC for the current thread until the returned handle is closed. */
    static MDC.MDCCloseable put(ConsumerRecord<?, ?> record) {
        String id = RecordHeaders.correlationId(record);
        return MDC.putCloseable(MDC_KEY, id != null ? id : RecordHeaders.origin(record));
    }
}
