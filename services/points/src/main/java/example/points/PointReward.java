package example.points;

import jakarta.persistence.Column;
import jakarta.persistence.Entity;
import jakarta.persistence.Id;
import jakarta.persistence.Table;
import java.time.Instant;
import java.util.UUID;

/**
 * The reward of one payment. Its key is the payment id, so a payment is rewarded at most
 * once even if it were announced by two different events.
 */
@Entity
@Table(name = "point_rewards")
public class PointReward {
    @Id
    @Column(name = "payment_id")
    private UUID paymentId;

    @Column(name = "user_id", nullable = false)
    private long userId;

    @Column(nullable = false)
    private long points;

    @Column(name = "created_at", nullable = false)
    private Instant createdAt;

    protected PointReward() {}
}
