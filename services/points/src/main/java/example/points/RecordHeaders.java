package example.points;

import java.nio.charset.StandardCharsets;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.common.header.Header;

/** Reading the relay's headers off a record, shared by the listener and the dead-letter path. */
final class RecordHeaders {
    static final String ID = "id";
    static final String EVENT_TYPE = "eventType";
    static final String CORRELATION_ID = "correlationId";

    private RecordHeaders() {}

    /** The last header of that name as UTF-8 text, or {@code null}. */
    static String text(ConsumerRecord<?, ?> record, String name) {
        Header header = record.headers().lastHeader(name);
        return header == null || header.value() == null ? null : new String(header.value(), StandardCharsets.UTF_8);
    }

    /** The saga id: the {@code correlationId} header, else the key (the payment id), else {@code null}. */
    static String correlationId(ConsumerRecord<?, ?> record) {
        String header = text(record, CORRELATION_ID);
        if (header != null && !header.isBlank()) {
            return header;
        }
        return record.key() == null ? null : record.key().toString();
    }

    /** Where the record was read, {@code <topic>/<partition>/<offset>}: the outbox's {@code dlt_origin}. */
    static String origin(ConsumerRecord<?, ?> record) {
        return record.topic() + "/" + record.partition() + "/" + record.offset();
    }
}
