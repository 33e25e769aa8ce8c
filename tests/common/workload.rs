//! The outbox workload the end-to-end tests write: concurrent writers, transactions of
//! 1–100 rows, three insert styles, and a table outside the publication.

use std::collections::HashMap;
use std::pin::pin;

use bytes::Bytes;
use futures_util::SinkExt;

use super::pg::PgCluster;
use super::Rng;

/// What a writer committed in one transaction: its xid and row ids in insertion order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenTxn {
    pub xid: u32,
    pub ids: Vec<String>,
}

/// The five outbox columns as text: id, aggregatetype, aggregateid, type, payload.
pub type RowText = [String; 5];

const SELECT_WRITTEN: &str = "SELECT id::text, aggregatetype, aggregateid, type, payload::text \
     FROM outbox WHERE id::text = ANY($1)";

/// Writes `rows_per_writer` rows in transactions of 1–100 rows, cycling through a
/// multi-row VALUES insert, an INSERT ... SELECT and a COPY, each transaction also
/// touching a table outside the publication.
pub async fn write_rows(
    cluster: &PgCluster,
    db: &str,
    writer: usize,
    rows_per_writer: usize,
) -> (Vec<WrittenTxn>, HashMap<String, RowText>) {
    let mut client = cluster.client(db).await;
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (writer as u64 + 1));
    let (mut txns, mut rows) = (Vec::new(), HashMap::new());
    let mut written = 0;
    while written < rows_per_writer {
        let n = (rng.between(1, 100) as usize).min(rows_per_writer - written);
        let tx = client.transaction().await.unwrap();
        let xid: i64 = tx
            .query_one("SELECT txid_current()", &[])
            .await
            .unwrap()
            .get(0);
        let aggregate = ["order", "customer", "payment"][txns.len() % 3];
        let ids: Vec<String> = match txns.len() % 3 {
            0 => {
                let mut sql = String::from("INSERT INTO outbox VALUES ");
                for i in 0..n {
                    let id = uuid::Uuid::new_v4();
                    let seq = written + i;
                    sql += &format!(
                        "{}('{id}', '{aggregate}', 'w{writer}-k{}', 'Created', '{{\"writer\": {writer}, \"seq\": {seq}, \"note\": \"values\"}}')",
                        if i == 0 { "" } else { ", " },
                        seq % 7
                    );
                }
                sql += " RETURNING id::text";
                tx.query(&sql, &[]).await.unwrap().iter().map(|r| r.get(0)).collect()
            }
            1 => tx
                .query(
                    "INSERT INTO outbox \
                     SELECT gen_random_uuid(), $1::text, 'w' || $2::int || '-k' || (($3::int + i) % 7), 'Created', \
                            jsonb_build_object('writer', $2::int, 'seq', $3::int + i, 'note', 'select') \
                     FROM generate_series(0, $4::int - 1) AS i ORDER BY i RETURNING id::text",
                    &[&aggregate, &(writer as i32), &(written as i32), &(n as i32)],
                )
                .await
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect(),
            _ => {
                let ids: Vec<String> = (0..n).map(|_| uuid::Uuid::new_v4().to_string()).collect();
                let mut data = String::new();
                for (i, id) in ids.iter().enumerate() {
                    let seq = written + i;
                    data += &format!(
                        "{id}\t{aggregate}\tw{writer}-k{}\tCreated\t{{\"writer\": {writer}, \"seq\": {seq}, \"note\": \"copy \\\\t tab\"}}\n",
                        seq % 7
                    );
                }
                let sink = tx
                    .copy_in("COPY outbox (id, aggregatetype, aggregateid, type, payload) FROM STDIN")
                    .await
                    .unwrap();
                let mut sink = pin!(sink);
                sink.send(Bytes::from(data)).await.unwrap();
                sink.as_mut().finish().await.unwrap();
                ids
            }
        };
        assert_eq!(ids.len(), n);
        tx.execute(
            "INSERT INTO other (note) VALUES ($1)",
            &[&format!("w{writer}")],
        )
        .await
        .unwrap();
        for row in tx.query(SELECT_WRITTEN, &[&ids]).await.unwrap() {
            let text: RowText = [row.get(0), row.get(1), row.get(2), row.get(3), row.get(4)];
            rows.insert(text[0].clone(), text);
        }
        tx.commit().await.unwrap();
        txns.push(WrittenTxn {
            xid: xid as u32,
            ids,
        });
        written += n;
    }
    (txns, rows)
}

/// Writes rows `from..to`, payload `{"seq": n}`, key `k<n % 50>`, in transactions of 100;
/// returns each transaction's first seq and an upper bound of its commit end LSN.
pub async fn write_seq(
    client: &tokio_postgres::Client,
    from: i64,
    to: i64,
) -> Vec<(i64, outbox_relay::replication::Lsn)> {
    let mut committed = Vec::new();
    for start in (from..to).step_by(100) {
        client
            .execute(
                "INSERT INTO outbox SELECT gen_random_uuid(), 'order', 'k' || (i % 50), 'Created', \
                 jsonb_build_object('seq', i) FROM generate_series($1::bigint, $2::bigint) AS i",
                &[&start, &(start + 99).min(to - 1)],
            )
            .await
            .expect("insert outbox rows");
        committed.push((start, super::insert_lsn(client).await));
    }
    committed
}

/// The `n` of a record written by [`write_seq`].
pub fn seq_of(record: &super::kafka::ReceivedRecord) -> i64 {
    seq_of_payload(record.payload.as_deref().expect("payload"))
}

/// The `n` of a `{"seq": n}` payload.
pub fn seq_of_payload(payload: &[u8]) -> i64 {
    let text = std::str::from_utf8(payload).expect("utf-8 payload");
    text.trim_start_matches("{\"seq\": ")
        .trim_end_matches('}')
        .parse()
        .unwrap_or_else(|_| panic!("a {{\"seq\": n}} payload: {text}"))
}
