//! Where a newly assigned partition starts: the group's rebalance callback.
//!
//! librdkafka calls [`GroupContext::rebalance`] from inside `poll`, on the consumer's
//! thread, so it runs between two records, never during one (see "Rebalances" in the
//! parent module). On an assignment it reads the stored positions from the service
//! database and hands librdkafka the partitions with their start offsets already set, so
//! no fetch ever starts from anywhere else; on a revocation it only lets them go.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, TopicPartitionList};
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

use crate::db::Pool;

/// First and largest pause before reading the stored positions again.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Next offset to read, per (topic, partition).
type Positions = BTreeMap<(String, i32), i64>;

/// The consumer's context: what the rebalance callback needs to find stored positions.
pub(super) struct GroupContext {
    /// The runtime the pool's connections live on; the callback runs on a plain thread.
    pub(super) runtime: Handle,
    pub(super) pool: Pool,
    pub(super) group: String,
    pub(super) shutdown: CancellationToken,
}

impl ClientContext for GroupContext {
    /// librdkafka's global errors. A subscribed topic that does not exist yet is expected
    /// (see "Topics that do not exist yet" in the parent module); the rest librdkafka
    /// retries, so they are warnings.
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::UnknownTopicOrPartition) {
            tracing::debug!(%reason, "a subscribed topic does not exist yet");
        } else {
            tracing::warn!(%error, %reason, "kafka client error; librdkafka retries");
        }
    }
}

impl ConsumerContext for GroupContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        partitions: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let outcome = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.assign(consumer, partitions, cooperative)
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                tracing::info!(
                    group = %self.group,
                    partitions = %describe(partitions),
                    lost = consumer.assignment_lost(),
                    "partitions revoked"
                );
                if cooperative {
                    consumer.incremental_unassign(partitions)
                } else {
                    consumer.unassign()
                }
            }
            other => {
                tracing::error!(error = ?other, "unexpected rebalance event");
                Ok(())
            }
        };
        if let Err(e) = outcome {
            tracing::error!(error = %e, group = %self.group, "applying a rebalance failed");
        }
    }
}

impl GroupContext {
    /// Starts each newly assigned partition at its stored position (the beginning when
    /// none is stored), then hands those positions to librdkafka's offset store, so the
    /// group's Kafka offsets catch up with them.
    fn assign(
        &self,
        consumer: &BaseConsumer<Self>,
        partitions: &TopicPartitionList,
        cooperative: bool,
    ) -> KafkaResult<()> {
        tracing::debug!(group = %self.group, partitions = %describe(partitions),
            "assignment; reading the stored positions");
        let stored = self.stored_positions();
        let mut start = TopicPartitionList::new();
        let mut commit = TopicPartitionList::new();
        for p in partitions.elements() {
            let offset = match &stored {
                Some(stored) => match stored.get(&(p.topic().to_owned(), p.partition())) {
                    Some(&next) => {
                        commit.add_partition_offset(
                            p.topic(),
                            p.partition(),
                            Offset::Offset(next),
                        )?;
                        Offset::Offset(next)
                    }
                    None => Offset::Beginning,
                },
                // Shutting down before the positions could be read: start from the Kafka
                // group's offsets, which never run ahead of the stored ones (they are
                // committed after the database), so nothing is skipped.
                None => Offset::Stored,
            };
            start.add_partition_offset(p.topic(), p.partition(), offset)?;
        }
        tracing::info!(group = %self.group, partitions = %describe(&start), "partitions assigned");
        if cooperative {
            consumer.incremental_assign(&start)?;
        } else {
            consumer.assign(&start)?;
        }
        // The previous owner may have stopped between its database commit and its Kafka
        // commit; without this, the group's offset would lag until the next record.
        if commit.count() > 0 {
            if let Err(e) = consumer.store_offsets(&commit) {
                tracing::debug!(error = %e, "kafka offsets not stored on assignment");
            }
        }
        Ok(())
    }

    /// The group's stored positions, read again with backoff until the database answers;
    /// `None` if the service shuts down first.
    fn stored_positions(&self) -> Option<Positions> {
        let mut pause = RETRY_FIRST;
        loop {
            match self.runtime.block_on(self.read_positions()) {
                Ok(positions) => return Some(positions),
                Err(e) => tracing::warn!(error = %e, retry_in = ?pause,
                    "cannot read the stored positions; retrying"),
            }
            let stopped = self.runtime.block_on(async {
                tokio::select! {
                    () = self.shutdown.cancelled() => true,
                    () = tokio::time::sleep(pause) => false,
                }
            });
            if stopped {
                return None;
            }
            pause = (pause * 2).min(RETRY_MAX);
        }
    }

    async fn read_positions(&self) -> Result<Positions, super::AttemptError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT topic, partition, next_offset FROM consumer_offsets WHERE group_id = $1",
                &[&self.group],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| ((r.get(0), r.get(1)), r.get(2)))
            .collect())
    }
}

/// `topic[partition]@offset, ...` for the logs.
fn describe(partitions: &TopicPartitionList) -> String {
    let parts: Vec<String> = partitions
        .elements()
        .iter()
        .map(|p| match p.offset() {
            Offset::Offset(o) => format!("{}[{}]@{o}", p.topic(), p.partition()),
            Offset::Beginning => format!("{}[{}]@beginning", p.topic(), p.partition()),
            _ => format!("{}[{}]", p.topic(), p.partition()),
        })
        .collect();
    parts.join(", ")
}
