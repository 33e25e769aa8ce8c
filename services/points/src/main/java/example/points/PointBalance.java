package example.points;

import jakarta.persistence.Column;
import jakarta.persistence.Entity;
import jakarta.persistence.Id;
import jakarta.persistence.Table;

/** A user's points; changed only by {@link PointBalanceRepository#add}, read by the HTTP API. */
@Entity
@Table(name = "point_balances")
public class PointBalance {
    @Id
    @Column(name = "user_id")
    private long userId;

    @Column(nullable = false)
    private long balance;

    protected PointBalance() {}

    public long getBalance() {
        return balance;
    }
}
