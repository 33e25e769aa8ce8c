package outboxrelay.bench;

import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.atomic.AtomicReference;

import org.apache.kafka.clients.producer.Producer;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.header.internals.RecordHeader;

import io.debezium.DebeziumException;
import io.debezium.engine.ChangeEvent;
import io.debezium.engine.DebeziumEngine;

/**
 * Hands every batch of routed, converted records to Kafka and tells the engine a record is
 * processed only after Kafka acknowledged the whole batch (acks=all, idempotent producer):
 * the engine commits offsets, and so flushes the slot's LSN, only up to acknowledged records.
 * The engine calls handleBatch from its polling thread and polls again only after it
 * returned, so at most one batch is in flight.
 */
final class KafkaBatchSink implements DebeziumEngine.ChangeConsumer<ChangeEvent<Object, Object>> {

    private final Producer<byte[], byte[]> producer;
    private final long expect;
    private final AtomicLong acked = new AtomicLong();
    private volatile long drainedAtNanos;

    KafkaBatchSink(Producer<byte[], byte[]> producer, long expect) {
        this.producer = producer;
        this.expect = expect;
    }

    /** Records acknowledged by Kafka so far. */
    long acked() {
        return acked.get();
    }

    /** System.nanoTime() when the acknowledged count first reached the expected one, else 0. */
    long drainedAtNanos() {
        return drainedAtNanos;
    }

    @Override
    public void handleBatch(List<ChangeEvent<Object, Object>> records,
                            DebeziumEngine.RecordCommitter<ChangeEvent<Object, Object>> committer)
            throws InterruptedException {
        final CountDownLatch pending = new CountDownLatch(records.size());
        final AtomicReference<Exception> failure = new AtomicReference<>();
        for (ChangeEvent<Object, Object> record : records) {
            producer.send(toProducerRecord(record), (metadata, error) -> {
                if (error != null) {
                    failure.compareAndSet(null, error);
                }
                else {
                    final long n = acked.incrementAndGet();
                    if (expect > 0 && n >= expect && drainedAtNanos == 0) {
                        drainedAtNanos = System.nanoTime();
                    }
                }
                pending.countDown();
            });
        }
        // Interrupted (the engine stopping): nothing of this batch is marked, so its
        // offsets are not committed and a restart sends it again (at-least-once).
        pending.await();
        final Exception error = failure.get();
        if (error != null) {
            throw new DebeziumException("Kafka did not acknowledge a record of the batch", error);
        }
        for (ChangeEvent<Object, Object> record : records) {
            committer.markProcessed(record);
        }
        committer.markBatchFinished();
    }

    private static ProducerRecord<byte[], byte[]> toProducerRecord(ChangeEvent<Object, Object> record) {
        final List<Header> headers = new ArrayList<>(record.headers().size());
        for (io.debezium.engine.Header<Object> header : record.headers()) {
            headers.add(new RecordHeader(header.getKey(), (byte[]) header.getValue()));
        }
        return new ProducerRecord<>(record.destination(), record.partition(), (byte[]) record.key(),
                (byte[]) record.value(), headers);
    }
}
