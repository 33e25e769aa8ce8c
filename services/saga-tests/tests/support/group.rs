//! What Kafka's group coordinator says about a consumer group: who is in it, and which
//! partitions each member owns (the classic protocol's assignment, decoded).

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};

use super::kafka::Broker;

/// Per member of `group` (member id): how many partitions it is assigned. Empty while the
/// group has no members; `Err` says why the coordinator could not be asked.
pub fn assignments(broker: &Broker, group: &str) -> Result<Vec<(String, usize)>, String> {
    let client: BaseConsumer = broker
        .client_config()
        .create()
        .map_err(|e| format!("admin client: {e}"))?;
    let list = client
        .fetch_group_list(Some(group), Duration::from_secs(5))
        .map_err(|e| format!("describe group {group}: {e}"))?;
    let Some(info) = list.groups().iter().find(|g| g.name() == group) else {
        return Ok(Vec::new());
    };
    info.members()
        .iter()
        .map(|m| {
            let owned = partitions_in(m.assignment().unwrap_or_default())
                .ok_or_else(|| format!("{group}: undecodable assignment of {}", m.id()))?;
            Ok((m.id().to_owned(), owned))
        })
        .collect()
}

/// The number of partitions in a classic-protocol `ConsumerProtocolAssignment`
/// (version: int16, then [topic: string, partitions: [int32]], then user data); an empty
/// assignment (a member between rebalances) owns none.
fn partitions_in(bytes: &[u8]) -> Option<usize> {
    if bytes.is_empty() {
        return Some(0);
    }
    let mut at = 2; // version
    let mut take = |n: usize| {
        let slice = bytes.get(at..at + n)?;
        at += n;
        Some(slice)
    };
    let int = |b: &[u8]| i32::from_be_bytes(b.try_into().unwrap());
    let topics = int(take(4)?);
    let mut owned = 0;
    for _ in 0..topics.max(0) {
        let name_len = i16::from_be_bytes(take(2)?.try_into().unwrap());
        take(usize::try_from(name_len).ok()?)?;
        let partitions = usize::try_from(int(take(4)?)).ok()?;
        take(4 * partitions)?;
        owned += partitions;
    }
    Some(owned)
}
