package example.points;

import jakarta.persistence.Column;
import jakarta.persistence.Entity;
import jakarta.persistence.Id;
import jakarta.persistence.Table;
import java.time.Instant;
import java.util.UUID;

/**
 * An event already handled, by its {@code id} header. Only ever inserted through
 * {@link InboxRepository#claim}; mapped so the table is part of the validated schema.
 */
@Entity
@Table(name = "inbox")
public class InboxEntry {
    @Id
    @Column(name = "event_id")
    private UUID eventId;

    @Column(name = "event_type")
    private String eventType;

    @Column(name = "correlation_id")
    private String correlationId;

    private String topic;

    @Column(name = "received_at", nullable = false)
    private Instant receivedAt;

    protected InboxEntry() {}
}
