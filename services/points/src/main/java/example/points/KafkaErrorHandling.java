package example.points;

import org.slf4j.Logger;
import org.slf4j.LoggerFactory;
import org.springframework.context.annotation.Bean;
import org.springframework.context.annotation.Configuration;
import org.springframework.kafka.listener.DefaultErrorHandler;
import org.springframework.util.backoff.ExponentialBackOff;

/**
 * How a failed record is handled. Two kinds of failure:
 * <ul>
 * <li>Transient (the database is down, a deadlock, a timeout): retried with exponential
 * backoff, 1 s doubling to 30 s (kept below {@code max.poll.interval.ms}), forever: the
 * partition waits rather than losing the event or dead-lettering a good one. The
 * transaction rolled back, so a retry starts clean.</li>
 * <li>Permanent ({@link MalformedEventException}, and the exceptions spring-kafka already
 * classifies as not retryable, e.g. conversion errors): not retried; the recoverer writes
 * the record to {@code <topic>.DLT} through the outbox ({@link DeadLetters}) and the
 * handler commits its offset, so the partition moves on.</li>
 * </ul>
 * No {@code DeadLetterPublishingRecoverer}: a dead letter produced straight to Kafka would
 * not be atomic with the inbox row, and a replay would dead-letter it again. If writing the
 * dead letter itself fails (the database is down), the recoverer throws, the record is
 * sought back and redelivered, and it is tried again on the next poll.
 */
@Configuration
public class KafkaErrorHandling {
    private static final Logger log = LoggerFactory.getLogger(KafkaErrorHandling.class);

    @Bean
    public DefaultErrorHandler errorHandler(DeadLetters deadLetters) {
        ExponentialBackOff backOff = new ExponentialBackOff(1_000, 2.0);
        backOff.setMaxInterval(30_000);
        DefaultErrorHandler handler = new DefaultErrorHandler((record, exception) -> {
            try (var mdc = Correlation.put(record)) {
                deadLetters.write(record, reason(exception));
            }
        }, backOff);
        handler.addNotRetryableExceptions(MalformedEventException.class);
        // Retries are otherwise silent: an operator must see why the partition is waiting.
        handler.setRetryListeners((record, exception, attempt) -> {
            Throwable cause = rootCause(exception);
            if (!(cause instanceof MalformedEventException)) {
                try (var mdc = Correlation.put(record)) {
                    log.warn("record {} failed (attempt {}), retrying: {}", RecordHeaders.origin(record), attempt,
                            cause.toString(), exception);
                }
            }
        });
        handler.setCommitRecovered(true);
        return handler;
    }

    /** Why the record was dead-lettered: the innermost cause, which names what was wrong with it. */
    private static String reason(Throwable exception) {
        Throwable cause = rootCause(exception);
        return cause instanceof MalformedEventException ? cause.getMessage() : cause.toString();
    }

    private static Throwable rootCause(Throwable exception) {
        Throwable cause = exception;
        while (cause.getCause() != null && cause.getCause() != cause) {
            cause = cause.getCause();
        }
        return cause;
    }
}
