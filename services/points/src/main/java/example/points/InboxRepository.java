package example.points;

import java.util.UUID;
import org.springframework.data.jpa.repository.JpaRepository;
import org.springframework.data.jpa.repository.Modifying;
import org.springframework.data.jpa.repository.Query;

/** The inbox, the dedupe of redelivered and replayed records. */
public interface InboxRepository extends JpaRepository<InboxEntry, UUID> {
    /**
     * Records the event as seen unless it already is, atomically (two consumers racing on
     * the same event cannot both win): 1 when this call claimed it, 0 for a duplicate.
     */
    @Modifying
    @Query(nativeQuery = true, value = """
            INSERT INTO inbox (event_id, event_type, correlation_id, topic)
            VALUES (:eventId, :eventType, :correlationId, :topic)
            ON CONFLICT (event_id) DO NOTHING""")
    int claim(UUID eventId, String eventType, String correlationId, String topic);
}
