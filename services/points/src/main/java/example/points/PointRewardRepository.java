package example.points;

import java.util.UUID;
import org.springframework.data.jpa.repository.JpaRepository;
import org.springframework.data.jpa.repository.Modifying;
import org.springframework.data.jpa.repository.Query;

/** Rewards by payment. */
public interface PointRewardRepository extends JpaRepository<PointReward, UUID> {
    /** Records the reward unless the payment already has one: 1 when recorded, 0 if it had. */
    @Modifying
    @Query(nativeQuery = true, value = """
            INSERT INTO point_rewards (payment_id, user_id, points) VALUES (:paymentId, :userId, :points)
            ON CONFLICT (payment_id) DO NOTHING""")
    int recordIfAbsent(UUID paymentId, long userId, long points);
}
