package example.points;

import jakarta.persistence.Column;
import jakarta.persistence.Entity;
import jakarta.persistence.Id;
import jakarta.persistence.Table;
import java.util.UUID;
import org.hibernate.annotations.ColumnTransformer;

/**
 * A row of this service's outbox, the only way it publishes: saved in the transaction
 * that changed the points, and published by the outbox-relay sidecar from the WAL
 * ({@code config/points-relay.toml}). The columns are the relay's contract: {@code id} →
 * header {@code id}, {@code aggregatetype} → topic {@code outbox.event.<aggregatetype>},
 * {@code aggregateid} → key, {@code type} → header {@code eventType}, {@code correlation_id}
 * → header {@code correlationId}, {@code payload} → value; {@code dlt_reason} and
 * {@code dlt_origin}, set only on dead letters, → headers {@code dltReason}, {@code dltOrigin}.
 */
@Entity
@Table(name = "outbox")
public class OutboxEvent {
    @Id
    private UUID id;

    @Column(name = "aggregatetype", nullable = false)
    private String aggregateType;

    @Column(name = "aggregateid", nullable = false)
    private String aggregateId;

    @Column(nullable = false)
    private String type;

    @Column(name = "correlation_id", nullable = false)
    private String correlationId;

    /**
     * JSON text, cast to {@code jsonb} by PostgreSQL on insert. Not {@code @JdbcTypeCode(SqlTypes.JSON)}:
     * Hibernate 7 then needs a JSON FormatMapper, and finds none with Boot 4's Jackson 3 alone.
     */
    @Column(nullable = false, columnDefinition = "jsonb")
    @ColumnTransformer(write = "?::jsonb")
    private String payload;

    @Column(name = "dlt_reason")
    private String dltReason;

    @Column(name = "dlt_origin")
    private String dltOrigin;

    protected OutboxEvent() {}

    private OutboxEvent(String aggregateType, String aggregateId, String type, String correlationId, String payload,
            String dltReason, String dltOrigin) {
        this.id = UUID.randomUUID();
        this.aggregateType = aggregateType;
        this.aggregateId = aggregateId;
        this.type = type;
        this.correlationId = correlationId;
        this.payload = payload;
        this.dltReason = dltReason;
        this.dltOrigin = dltOrigin;
    }

    /** A domain event of this service. */
    public static OutboxEvent event(String aggregateType, String aggregateId, String type, String correlationId,
            String payload) {
        return new OutboxEvent(aggregateType, aggregateId, type, correlationId, payload, null, null);
    }

    /** A record this service could not apply, for the {@code <topic>.DLT} topic. */
    public static OutboxEvent deadLetter(String aggregateType, String aggregateId, String type, String correlationId,
            String payload, String reason, String origin) {
        return new OutboxEvent(aggregateType, aggregateId, type, correlationId, payload, reason, origin);
    }

    public UUID getId() {
        return id;
    }
}
