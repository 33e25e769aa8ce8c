package example.points;

import org.springframework.transaction.annotation.Transactional;
import org.springframework.web.bind.annotation.GetMapping;
import org.springframework.web.bind.annotation.PathVariable;
import org.springframework.web.bind.annotation.RestController;

/** Reads a user's balance: 0 for a user never rewarded, since every user starts there. */
@RestController
public class PointsController {
    private final PointBalanceRepository balances;

    public PointsController(PointBalanceRepository balances) {
        this.balances = balances;
    }

    public record Balance(long userId, long balance) {}

    @GetMapping("/points/{userId}")
    @Transactional(readOnly = true)
    public Balance balance(@PathVariable long userId) {
        return new Balance(userId, balances.findById(userId).map(PointBalance::getBalance).orElse(0L));
    }
}
