package example.points;

import org.springframework.stereotype.Component;

/**
 * The seed's reward rule, apart from storage so it is the one place to read it: 10 % of
 * the paid amount, rounded down to a multiple of 100, refused for a blocked user or above
 * the cap.
 */
@Component
public class RewardPolicy {
    private final PointsProperties properties;

    public RewardPolicy(PointsProperties properties) {
        this.properties = properties;
    }

    /** The points a user earns for a payment, or why they earn none. */
    public record Decision(long points, String refusal) {
        public boolean refused() {
            return refusal != null;
        }
    }

    public Decision decide(long userId, long paidAmount) {
        // floor(paidAmount × 10 % / 100) × 100, in integers (paidAmount is never negative).
        long points = paidAmount / 1000 * 100;
        if (properties.blockedUsers().contains(userId)) {
            return new Decision(0, "user blocked");
        }
        if (points > properties.maxReward()) {
            return new Decision(0, "reward cap reached");
        }
        return new Decision(points, null);
    }
}
