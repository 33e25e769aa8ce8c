package example.points;

import java.util.UUID;

/**
 * One record of {@code outbox.event.payment} as the relay publishes it: the {@code id}
 * header (the dedupe key), {@code eventType}, {@code correlationId} (the saga id), and for
 * a {@code ReservationCompleted} its parsed payload ({@code null} for the other types,
 * which this service only marks as seen).
 */
public record PaymentEvent(UUID id, String type, String correlationId, String topic, ReservationCompleted reservation) {
    public static final String RESERVATION_COMPLETED = "ReservationCompleted";

    /** The payload of {@code ReservationCompleted}. */
    public record ReservationCompleted(UUID paymentId, long reservationId, long userId, long paidAmount) {}
}
