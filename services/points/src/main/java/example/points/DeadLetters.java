package example.points;

import java.nio.charset.StandardCharsets;
import java.util.UUID;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;
import org.springframework.stereotype.Service;
import org.springframework.transaction.annotation.Transactional;
import tools.jackson.core.JacksonException;
import tools.jackson.databind.JsonNode;
import tools.jackson.databind.json.JsonMapper;

/**
 * Sends a record that can never be applied to {@code <topic>.DLT} through the outbox, not
 * with a Kafka producer: the dead letter and its inbox row commit together, so a replay of
 * the topic dead-letters nothing twice. The inbox key is the record's {@code id} header,
 * or, when that is missing or not a UUID, a name-based UUID of where the record was read
 * ({@code <topic>/<partition>/<offset>}), which a replay reads again at the same place.
 */
@Service
public class DeadLetters {
    private static final Logger log = LoggerFactory.getLogger(DeadLetters.class);
    private static final String TOPIC_PREFIX = "outbox.event.";

    private final InboxRepository inbox;
    private final Outbox outbox;
    private final JsonMapper json;

    public DeadLetters(InboxRepository inbox, Outbox outbox, JsonMapper json) {
        this.inbox = inbox;
        this.outbox = outbox;
        this.json = json;
    }

    @Transactional
    public void write(ConsumerRecord<?, ?> record, String reason) {
        String origin = RecordHeaders.origin(record);
        String correlationId = RecordHeaders.correlationId(record);
        String type = RecordHeaders.text(record, RecordHeaders.EVENT_TYPE);
        UUID id = PaymentEventReader.eventIdOrNull(record);
        if (id == null) {
            id = UUID.nameUUIDFromBytes(("dead-letter:" + origin).getBytes(StandardCharsets.UTF_8));
        }
        if (inbox.claim(id, type, correlationId, record.topic()) == 0) {
            log.info("record {} (inbox id {}) already handled: not dead-lettered again", origin, id);
            return;
        }
        outbox.append(OutboxEvent.deadLetter(
                aggregateType(record.topic()),
                record.key() != null ? record.key().toString()
                        : record.topic() + "-" + record.partition() + "-" + record.offset(),
                type != null ? type : "Unknown",
                correlationId != null ? correlationId : origin,
                payload(record.value()),
                reason,
                origin));
        log.warn("record {} dead-lettered to {}.DLT: {}", origin, record.topic(), reason);
    }

    /** {@code outbox.event.payment} → {@code payment.DLT}, which the relay routes to {@code outbox.event.payment.DLT}. */
    private static String aggregateType(String topic) {
        return (topic.startsWith(TOPIC_PREFIX) ? topic.substring(TOPIC_PREFIX.length()) : topic) + ".DLT";
    }

    /** The original value if it is JSON, else {@code {"raw": "<the value as text>"}}. */
    private String payload(Object value) {
        String text = value == null ? null : value.toString();
        if (text != null) {
            try {
                JsonNode node = json.readTree(text);
                if (node != null && !node.isMissingNode()) {
                    return json.writeValueAsString(node);
                }
            } catch (JacksonException notJson) {
                // falls through to the raw wrapper
            }
        }
        return json.writeValueAsString(json.createObjectNode().put("raw", text));
    }
}
