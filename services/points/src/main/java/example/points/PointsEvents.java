package example.points;

/**
 * The events this service emits on {@code outbox.event.points}, as JSON payloads (a
 * record's components serialize in declaration order).
 */
final class PointsEvents {
    static final String REWARDED = "PointsRewarded";
    static final String REWARD_FAILED = "PointsRewardFailed";

    private PointsEvents() {}

    record Rewarded(String paymentId, long userId, long points) {}

    record RewardFailed(String paymentId, long userId, String reason) {}
}
