package example.points;

import java.util.UUID;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.springframework.stereotype.Component;
import tools.jackson.core.JacksonException;
import tools.jackson.databind.JsonNode;
import tools.jackson.databind.json.JsonMapper;

/**
 * Turns a raw record into a {@link PaymentEvent}, before any transaction, so that every
 * way a record can be unusable is one exception ({@link MalformedEventException}) the
 * error handler knows not to retry.
 */
@Component
public class PaymentEventReader {
    private final JsonMapper json;

    public PaymentEventReader(JsonMapper json) {
        this.json = json;
    }

    public PaymentEvent read(ConsumerRecord<String, String> record) {
        UUID id = eventId(record);
        String type = RecordHeaders.text(record, RecordHeaders.EVENT_TYPE);
        if (type == null || type.isBlank()) {
            throw new MalformedEventException("missing eventType header");
        }
        String correlationId = RecordHeaders.correlationId(record);
        if (correlationId == null) {
            throw new MalformedEventException("missing correlationId header and key");
        }
        PaymentEvent.ReservationCompleted reservation =
                PaymentEvent.RESERVATION_COMPLETED.equals(type) ? reservation(record.value()) : null;
        return new PaymentEvent(id, type, correlationId, record.topic(), reservation);
    }

    /** The {@code id} header as a UUID; {@code null} when it is missing or invalid. */
    static UUID eventIdOrNull(ConsumerRecord<?, ?> record) {
        String text = RecordHeaders.text(record, RecordHeaders.ID);
        if (text == null) {
            return null;
        }
        try {
            return UUID.fromString(text.trim());
        } catch (IllegalArgumentException e) {
            return null;
        }
    }

    private static UUID eventId(ConsumerRecord<?, ?> record) {
        UUID id = eventIdOrNull(record);
        if (id == null) {
            throw new MalformedEventException(RecordHeaders.text(record, RecordHeaders.ID) == null
                    ? "missing id header" : "id header is not a UUID");
        }
        return id;
    }

    private PaymentEvent.ReservationCompleted reservation(String value) {
        JsonNode node;
        try {
            node = value == null ? null : json.readTree(value);
        } catch (JacksonException e) {
            throw new MalformedEventException("payload is not JSON: " + e.getOriginalMessage());
        }
        if (node == null || !node.isObject()) {
            throw new MalformedEventException("payload is not a JSON object");
        }
        long paidAmount = longField(node, "paidAmount");
        if (paidAmount < 0) {
            throw new MalformedEventException("paidAmount is negative");
        }
        return new PaymentEvent.ReservationCompleted(
                uuidField(node, "paymentId"), longField(node, "reservationId"), longField(node, "userId"), paidAmount);
    }

    private static long longField(JsonNode node, String name) {
        JsonNode field = node.get(name);
        if (field == null || !field.isIntegralNumber() || !field.canConvertToLong()) {
            throw new MalformedEventException("field " + name + " missing or not an integer");
        }
        return field.longValue();
    }

    private static UUID uuidField(JsonNode node, String name) {
        JsonNode field = node.get(name);
        if (field == null || !field.isString()) {
            throw new MalformedEventException("field " + name + " missing or not a string");
        }
        try {
            return UUID.fromString(field.stringValue());
        } catch (IllegalArgumentException e) {
            throw new MalformedEventException("field " + name + " is not a UUID");
        }
    }
}
