package example.points;

import org.slf4j.Logger;
import org.slf4j.LoggerFactory;
import org.springframework.stereotype.Service;
import org.springframework.transaction.annotation.Transactional;

/**
 * Applies one payment event in one transaction: the inbox row, the points change and the
 * outbox row commit together or not at all, so a redelivery after a crash either finds
 * the inbox row (and changes nothing) or finds nothing (and does it all).
 */
@Service
public class RewardService {
    private static final Logger log = LoggerFactory.getLogger(RewardService.class);

    private final InboxRepository inbox;
    private final PointBalanceRepository balances;
    private final PointRewardRepository rewards;
    private final RewardPolicy policy;
    private final Outbox outbox;

    public RewardService(InboxRepository inbox, PointBalanceRepository balances, PointRewardRepository rewards,
            RewardPolicy policy, Outbox outbox) {
        this.inbox = inbox;
        this.balances = balances;
        this.rewards = rewards;
        this.policy = policy;
        this.outbox = outbox;
    }

    @Transactional
    public void apply(PaymentEvent event) {
        if (inbox.claim(event.id(), event.type(), event.correlationId(), event.topic()) == 0) {
            log.info("event {} ({}) already handled: ignored", event.id(), event.type());
            return;
        }
        if (event.reservation() == null) {
            log.info("event {} ({}) is not for points: marked seen", event.id(), event.type());
            return;
        }
        reward(event.reservation(), event.correlationId());
    }

    private void reward(PaymentEvent.ReservationCompleted reservation, String correlationId) {
        String paymentId = reservation.paymentId().toString();
        RewardPolicy.Decision decision = policy.decide(reservation.userId(), reservation.paidAmount());
        if (decision.refused()) {
            log.info("reward for payment {} refused: {}", paymentId, decision.refusal());
            outbox.emit(paymentId, PointsEvents.REWARD_FAILED, correlationId,
                    new PointsEvents.RewardFailed(paymentId, reservation.userId(), decision.refusal()));
            return;
        }
        if (rewards.recordIfAbsent(reservation.paymentId(), reservation.userId(), decision.points()) == 0) {
            log.info("payment {} already rewarded by another event: ignored", paymentId);
            return;
        }
        balances.add(reservation.userId(), decision.points());
        log.info("rewarded {} points to user {} for payment {}", decision.points(), reservation.userId(), paymentId);
        outbox.emit(paymentId, PointsEvents.REWARDED, correlationId,
                new PointsEvents.Rewarded(paymentId, reservation.userId(), decision.points()));
    }
}
