package example.points;

import org.springframework.data.jpa.repository.JpaRepository;
import org.springframework.data.jpa.repository.Modifying;
import org.springframework.data.jpa.repository.Query;

/** Users' balances. */
public interface PointBalanceRepository extends JpaRepository<PointBalance, Long> {
    /** Adds points in one statement, creating the balance on a user's first reward. */
    @Modifying
    @Query(nativeQuery = true, value = """
            INSERT INTO point_balances (user_id, balance) VALUES (:userId, :points)
            ON CONFLICT (user_id) DO UPDATE SET balance = point_balances.balance + EXCLUDED.balance""")
    void add(long userId, long points);
}
