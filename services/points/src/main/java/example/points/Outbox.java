package example.points;

import jakarta.persistence.EntityManager;
import org.springframework.stereotype.Component;
import org.springframework.transaction.annotation.Propagation;
import org.springframework.transaction.annotation.Transactional;
import tools.jackson.databind.json.JsonMapper;

/**
 * Appends to the outbox in the caller's transaction (mandatory: an outbox row written
 * outside the transaction of the change it announces would defeat the pattern).
 */
@Component
@Transactional(propagation = Propagation.MANDATORY)
public class Outbox {
    /** Routes to topic {@code outbox.event.points}. */
    public static final String POINTS = "points";

    private final EntityManager entityManager;
    private final JsonMapper json;

    public Outbox(EntityManager entityManager, JsonMapper json) {
        this.entityManager = entityManager;
        this.json = json;
    }

    /** Emits {@code payload} (serialized to JSON) as event {@code type} of points aggregate {@code aggregateId}. */
    public void emit(String aggregateId, String type, String correlationId, Object payload) {
        entityManager.persist(OutboxEvent.event(POINTS, aggregateId, type, correlationId, json.writeValueAsString(payload)));
    }

    public void append(OutboxEvent event) {
        entityManager.persist(event);
    }
}
