package example.points;

import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.springframework.kafka.annotation.KafkaListener;
import org.springframework.stereotype.Component;

/**
 * Consumes the payment service's events (group {@code CONSUMER_GROUP}, read_committed).
 * Offsets are committed by the container after this returns (ack mode {@code record}),
 * that is after the database commit: a crash in between redelivers, and the inbox absorbs
 * the redelivery. A {@link MalformedEventException} goes to the error handler, which
 * dead-letters the record ({@link KafkaErrorHandling}).
 */
@Component
public class PaymentEventListener {
    static final String TOPIC = "outbox.event.payment";

    private final PaymentEventReader reader;
    private final RewardService rewards;

    public PaymentEventListener(PaymentEventReader reader, RewardService rewards) {
        this.reader = reader;
        this.rewards = rewards;
    }

    @KafkaListener(topics = TOPIC)
    public void onRecord(ConsumerRecord<String, String> record) {
        try (var mdc = Correlation.put(record)) {
            rewards.apply(reader.read(record));
        }
    }
}
