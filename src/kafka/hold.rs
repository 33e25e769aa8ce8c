//! Holding a topic the broker refuses, instead of dead-lettering its rows.
//!
//! When the broker refuses a record for a fault of its *topic* (Write revoked, the topic
//! deleted, a policy, the topic's size limit; see [`crate::policy`]), every later record
//! for that topic would be refused the same way: dead-lettering them would empty the topic
//! into the DLQ until someone noticed, and the consumers of the topic would miss every
//! event without anything telling them. So the relay holds: it takes no new events, waits
//! until librdkafka has reported on everything it was given (later records of the refused
//! topic that were already queued come back refused too), and sends the refused records
//! again, oldest first, with backoff, until the broker takes all of them. Meanwhile
//! `/readyz` answers 503 with the fix, `outbox_relay_topic_blocked{topic}` is 1, and one
//! error line per topic per [`LOG_EVERY`] names the fix.
//!
//! # Acknowledgement and order
//!
//! A refused record was never acknowledged, so the slot stays before the first of them
//! for as long as they are held; they are acknowledged only by the successful delivery
//! report of a later attempt. While the topic refuses, each attempt sends one record, the
//! oldest (a probe), and only once the producer's metadata lists the topic's partitions
//! again (librdkafka drops them while the topic's metadata carries the error). Only when
//! the broker has taken the probe do the rest follow, in the order they were refused,
//! which per partition is the order they were first sent; nothing newer is sent until all
//! of them are back in librdkafka's hands. The order is the one records were first handed
//! to the producer ([`RefusedRecord::order`]), not the order their reports came back in:
//! while librdkafka moves records of a refused topic through its unassigned queue, reports
//! of one transaction can come back out of order, and a full-size run of the fault suite
//! reordered a key when the held records were sorted by report order.
//! (A window remains only if the topic is refused again between the probe's
//! acknowledgement and the rest.)
//!
//! The state machine ([`BlockedTopics`]) decides when to log and what readiness says; it
//! takes the time as an argument, so its tests need no clock.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::error::RDKafkaErrorCode;
use tokio::time::sleep;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use super::producer::{InFlight, RefusedRecord};
use super::{EventProducer, PublishError, TopicManager};
use crate::backoff::Backoff;
use crate::checkpoint::SharedCheckpoint;
use crate::config::KafkaConfig;
use crate::health::Health;
use crate::metrics as metric;
use crate::outbox::{OutboundRecord, Routed, Router};
use crate::policy::{self, Action, Failure};

/// One error line per blocked topic at most this often.
pub const LOG_EVERY: Duration = Duration::from_secs(60);
/// First pause before held records are sent again.
const RETRY_INITIAL: Duration = Duration::from_millis(500);
/// Longest pause between attempts: a held topic is tried again at least this often.
const RETRY_MAX: Duration = Duration::from_secs(10);
/// How long to wait for one delivery report while draining librdkafka's queue.
const REPORT_WAIT: Duration = Duration::from_millis(50);

/// Topics the broker refuses, and when each was last reported.
#[derive(Debug, Default)]
pub struct BlockedTopics {
    /// At most one entry per topic with held records, so bounded by librdkafka's queue.
    topics: BTreeMap<String, Blocked>,
}

#[derive(Debug, Clone)]
struct Blocked {
    code: RDKafkaErrorCode,
    since: Instant,
    logged: Option<Instant>,
}

/// What to tell the operator about a blocked topic, when it is due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    pub topic: String,
    pub code: RDKafkaErrorCode,
    pub blocked_for: Duration,
}

impl BlockedTopics {
    /// The broker refused a record for `topic` with `code` at `now`. Returns the alert to
    /// log when one is due: the first refusal, then once per [`LOG_EVERY`].
    pub fn refused(&mut self, topic: &str, code: RDKafkaErrorCode, now: Instant) -> Option<Alert> {
        let blocked = self.topics.entry(topic.to_owned()).or_insert(Blocked {
            code,
            since: now,
            logged: None,
        });
        blocked.code = code;
        let due = blocked
            .logged
            .is_none_or(|at| now.saturating_duration_since(at) >= LOG_EVERY);
        if !due {
            return None;
        }
        blocked.logged = Some(now);
        Some(Alert {
            topic: topic.to_owned(),
            code,
            blocked_for: now.saturating_duration_since(blocked.since),
        })
    }

    /// `topic` took every record sent to it again: how long it was blocked, if it was.
    pub fn flowing(&mut self, topic: &str, now: Instant) -> Option<Duration> {
        let blocked = self.topics.remove(topic)?;
        Some(now.saturating_duration_since(blocked.since))
    }

    /// Topics blocked now.
    pub fn topics(&self) -> impl Iterator<Item = &str> {
        self.topics.keys().map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.topics.is_empty()
    }

    /// The readiness reason: the first blocked topic (by name) with its fix, and how many
    /// more there are.
    pub fn reason(&self, principal: &str) -> Option<String> {
        let (topic, blocked) = self.topics.iter().next()?;
        let more = match self.topics.len() - 1 {
            0 => String::new(),
            n => format!(" (and {n} more topics)"),
        };
        Some(format!(
            "topic {topic} refuses records ({}){more}: {}",
            blocked.code,
            policy::topic_fix(blocked.code, topic, principal)
        ))
    }
}

/// Holds records refused for a fault of their topic and sends them again.
#[derive(Debug)]
pub struct Hold {
    blocked: BlockedTopics,
    principal: String,
    health: Health,
    checkpoint: SharedCheckpoint,
    /// Shutdown came while records were held: nothing newer may be sent (it would land
    /// before them), so the sink stops publishing.
    interrupted: bool,
}

impl Hold {
    pub fn new(kafka: &KafkaConfig, health: Health, checkpoint: SharedCheckpoint) -> Hold {
        Hold {
            blocked: BlockedTopics::default(),
            principal: policy::principal(&kafka.properties),
            health,
            checkpoint,
            interrupted: false,
        }
    }

    /// Whether shutdown interrupted a hold: publish nothing more.
    pub fn interrupted(&self) -> bool {
        self.interrupted
    }

    /// Sends every record the producer holds (and `refused_at_send`, one librdkafka
    /// refused at once, newer than everything it was given) again, oldest first, with
    /// backoff, until Kafka has acknowledged all of them; the caller sends nothing newer
    /// meanwhile. Returns early only at shutdown, with the held records unacknowledged (the
    /// slot stays before them) and [`Hold::interrupted`] set, or with an error that is not
    /// the topic's.
    pub async fn run(
        &mut self,
        producer: &EventProducer,
        topics: &mut TopicManager,
        router: &mut Router,
        refused_at_send: Option<RefusedRecord>,
        shutdown: &CancellationToken,
    ) -> Result<(), PublishError> {
        let mut unsent: Vec<RefusedRecord> = refused_at_send.into_iter().collect();
        let mut sent_to: Vec<Arc<str>> = Vec::new();
        let mut backoff = Backoff::new(RETRY_INITIAL, RETRY_MAX);
        // Until one record is taken again, send only a probe (see below).
        let mut probe_next = true;
        loop {
            // Every record handed over earlier has its report: what comes back refused now
            // is older than anything not sent yet.
            if !settle(producer, shutdown).await? {
                self.interrupted = true;
                return Ok(());
            }
            let mut held = producer.take_held();
            // Refused (again): probe with one record after a pause. Otherwise the probe,
            // or everything, went through: send the rest at once.
            let refused = !held.is_empty() || std::mem::take(&mut probe_next);
            held.sort_by_key(|r| r.order); // first send order, not report order
            held.append(&mut unsent);
            let now = Instant::now();
            for topic in &sent_to {
                if !held.iter().any(|r| *r.topic == **topic) {
                    self.flowing(topic, now);
                }
            }
            if held.is_empty() {
                self.health.set_topic_blocked(None);
                return Ok(());
            }
            sent_to.clear();
            let mut queue = held.into_iter();
            if refused {
                let mut again = Vec::with_capacity(queue.len());
                for record in queue.by_ref() {
                    self.refused(&record.topic, record.code, now);
                    if policy::is_topic_gone(record.code) {
                        topics.forget(&record.topic);
                    }
                    again.push(record);
                }
                self.health
                    .set_topic_blocked(self.blocked.reason(&self.principal));
                tokio::select! {
                    _ = sleep(backoff.next_delay()) => {}
                    _ = shutdown.cancelled() => {
                        self.interrupted = true;
                        return Ok(());
                    }
                }
                // Only the oldest record goes out until the broker takes one again: were
                // the rest sent too, some could wait in librdkafka's unassigned queue while
                // the probe is refused, and be delivered before it once the fix lands.
                // Nothing goes until the producer knows the topic's partitions again
                // (librdkafka drops them while the topic's metadata carries the error).
                let mut again = again.into_iter();
                let probe = again.next();
                unsent.extend(again);
                let Some(probe) = probe else { continue };
                // A topic that was gone is looked up again, and created when configured.
                let topic: Arc<str> = Arc::from(probe.topic.as_str());
                let there = topics.ensure(&topic, producer).await.is_ok();
                if !there || !producer.knows_partitions(&probe.topic).await {
                    unsent.insert(0, probe);
                    probe_next = true;
                    continue;
                }
                queue = vec![probe].into_iter();
            }
            while let Some(record) = queue.next() {
                let topic: Arc<str> = Arc::from(record.topic.as_str());
                match self.send_again(producer, topics, router, record).await {
                    Ok(()) => {
                        if !sent_to.contains(&topic) {
                            sent_to.push(topic);
                        }
                    }
                    // Refused again at once: it and everything after it wait for the next
                    // round, in order.
                    Err(SendAgain::Held(record)) => {
                        probe_next = true;
                        let rest = std::mem::take(&mut unsent);
                        unsent.push(record);
                        unsent.extend(queue.by_ref());
                        unsent.extend(rest);
                    }
                    Err(SendAgain::Failed(e)) => return Err(e),
                }
            }
        }
    }

    /// A record librdkafka refused at once for a fault of its topic: hold it (and
    /// everything before it that comes back refused).
    pub fn refused_at_send(
        topic: &str,
        error: &PublishError,
        in_flight: InFlight,
    ) -> RefusedRecord {
        RefusedRecord {
            in_flight,
            // Newer than everything sent before it (and nothing is sent after it while
            // it is held).
            order: u64::MAX,
            topic: topic.to_owned(),
            code: error.code().unwrap_or(RDKafkaErrorCode::Fail),
        }
    }

    fn refused(&mut self, topic: &str, code: RDKafkaErrorCode, now: Instant) {
        metrics::gauge!(metric::TOPIC_BLOCKED, "topic" => topic.to_owned()).set(1.0);
        let Some(alert) = self.blocked.refused(topic, code, now) else {
            return;
        };
        error!(
            topic,
            code = %code,
            blocked_for_s = alert.blocked_for.as_secs(),
            fix = %policy::topic_fix(code, topic, &self.principal),
            "kafka refuses the topic; holding its records (nothing is dead-lettered, the slot stays before them) and retrying"
        );
    }

    fn flowing(&mut self, topic: &str, now: Instant) {
        if let Some(blocked_for) = self.blocked.flowing(topic, now) {
            metrics::gauge!(metric::TOPIC_BLOCKED, "topic" => topic.to_owned()).set(0.0);
            info!(
                topic,
                blocked_for_ms = blocked_for.as_millis() as u64,
                "kafka takes the topic's records again"
            );
        }
    }

    async fn send_again(
        &mut self,
        producer: &EventProducer,
        topics: &mut TopicManager,
        router: &mut Router,
        held: RefusedRecord,
    ) -> Result<(), SendAgain> {
        let Some(record) = rebuild(router, &held.in_flight) else {
            // Nothing to publish after all (cannot happen for a record that was sent):
            // acknowledge it rather than hold the slot forever.
            if let Err(e) = self.checkpoint.ack(held.in_flight.event.seq, 1) {
                error!(error = %e, "acknowledgement rejected by the checkpoint");
            }
            return Ok(());
        };
        let sent = match topics.ensure(&record.topic, producer).await {
            Ok(()) => producer.send_as(&record, held.in_flight, held.order).await,
            Err(e) => Err((e, held.in_flight)),
        };
        match sent {
            Ok(()) => Ok(()),
            Err((e, in_flight)) => {
                // A held topic that is not there (yet) again existed: it stays held, never
                // dead-lettered as a topic that never existed would be.
                let gone = matches!(
                    e,
                    PublishError::UnknownTopic(_) | PublishError::TopicGone(_)
                );
                if gone || policy::classify(Failure::Publish(&e)) == Action::Hold {
                    Err(SendAgain::Held(RefusedRecord {
                        in_flight,
                        order: held.order,
                        topic: held.topic,
                        code: e.code().unwrap_or(held.code),
                    }))
                } else {
                    Err(SendAgain::Failed(e))
                }
            }
        }
    }
}

enum SendAgain {
    Held(RefusedRecord),
    Failed(PublishError),
}

/// The record `in_flight` was: its routed record, or the dead letter it carried.
pub(crate) fn rebuild(router: &mut Router, in_flight: &InFlight) -> Option<OutboundRecord> {
    let event = &in_flight.event;
    let (policy, original) = match router.route(&event.change) {
        Routed::Publish(record) => (Arc::clone(&record.policy), Some(record)),
        Routed::Reject { policy, .. } => (policy, None),
        // Never handed to the producer: nothing to rebuild.
        Routed::Ignore { .. } | Routed::Foreign(_) => return None,
    };
    match &in_flight.dead_letter {
        Some(reason) => Some(crate::dlq::record(
            event,
            &policy,
            original.as_ref(),
            reason,
        )),
        None => original,
    }
}

/// Waits until librdkafka has reported on every record it was given; `false` at shutdown.
async fn settle(
    producer: &EventProducer,
    shutdown: &CancellationToken,
) -> Result<bool, PublishError> {
    loop {
        producer.check_failures()?;
        if producer.in_flight() == 0 {
            return Ok(true);
        }
        tokio::select! {
            _ = producer.wait_report(REPORT_WAIT) => {}
            _ = shutdown.cancelled() => return Ok(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RDKafkaErrorCode::TopicAuthorizationFailed as Denied;

    #[test]
    fn one_alert_per_topic_per_minute() {
        let mut blocked = BlockedTopics::default();
        let t0 = Instant::now();
        let first = blocked
            .refused("orders", Denied, t0)
            .expect("first refusal alerts");
        assert_eq!(first.blocked_for, Duration::ZERO);
        for s in 1..60 {
            assert_eq!(
                blocked.refused("orders", Denied, t0 + Duration::from_secs(s)),
                None,
                "quiet at {s} s"
            );
        }
        let again = blocked
            .refused("orders", Denied, t0 + LOG_EVERY)
            .expect("a minute later");
        assert_eq!(again.blocked_for, LOG_EVERY);
        // Another topic has its own minute.
        assert!(blocked
            .refused("payments", Denied, t0 + Duration::from_secs(61))
            .is_some());
        assert_eq!(blocked.topics().collect::<Vec<_>>(), ["orders", "payments"]);
    }

    #[test]
    fn flowing_again_ends_the_block() {
        let mut blocked = BlockedTopics::default();
        let t0 = Instant::now();
        assert_eq!(blocked.reason("User:relay"), None);
        blocked.refused("orders", Denied, t0);
        let reason = blocked.reason("User:relay").unwrap();
        assert!(
            reason.starts_with("topic orders refuses records (")
                && reason.contains("grant Write on topic orders to principal User:relay"),
            "{reason}"
        );
        blocked.refused("payments", Denied, t0);
        assert!(blocked
            .reason("User:relay")
            .unwrap()
            .contains("(and 1 more topics)"));
        assert_eq!(
            blocked.flowing("orders", t0 + Duration::from_secs(5)),
            Some(Duration::from_secs(5))
        );
        assert_eq!(blocked.flowing("orders", t0), None, "already flowing");
        assert_eq!(blocked.flowing("payments", t0), Some(Duration::ZERO));
        assert!(blocked.is_empty());
        // Blocked again later: alerts at once.
        assert!(blocked
            .refused("orders", Denied, t0 + Duration::from_secs(6))
            .is_some());
    }
}
