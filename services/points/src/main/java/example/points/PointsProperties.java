package example.points;

import java.util.Set;
import org.springframework.boot.context.properties.ConfigurationProperties;
import org.springframework.boot.context.properties.bind.DefaultValue;

/**
 * The reward rules an operator sets from the environment: {@code POINTS_BLOCKED_USERS}
 * (comma-separated user ids whose rewards are refused) and {@code POINTS_MAX_REWARD}
 * (a reward above it is refused), so the saga's failure path can be driven without code.
 */
@ConfigurationProperties("points")
public record PointsProperties(@DefaultValue Set<Long> blockedUsers, @DefaultValue("100000") long maxReward) {}
