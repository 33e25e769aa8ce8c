package outboxrelay.bench;

import java.lang.management.ManagementFactory;
import java.nio.file.Files;
import java.nio.file.Path;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.common.errors.TopicExistsException;
import org.apache.kafka.common.serialization.ByteArraySerializer;

import io.debezium.embedded.ClientProvided;
import io.debezium.engine.ChangeEvent;
import io.debezium.engine.DebeziumEngine;

/**
 * Drains an existing pgoutput replication slot with Debezium's embedded engine (PostgreSQL
 * connector, outbox EventRouter) into Kafka, for bench/run.sh. See bench/lib/debezium.sh.
 *
 * <pre>
 * java -cp ... outboxrelay.bench.DebeziumBench --pg-host H --pg-port P --db D --user U
 *     --slot S --publication PUB --bootstrap HOST:PORT --topic-prefix X
 *     --offsets-dir DIR --profile default|tuned
 *     [--aggregate-types order,payment,customer] [--partitions 3] [--expect N]
 * </pre>
 *
 * Records go to {@code X.outbox.event.<aggregatetype>} (created at start-up, before the
 * engine starts), key = aggregateid, value = the payload column as text, header id = the
 * row id. Prints to stdout, one line each:
 * <ul>
 * <li>{@code profile NAME} and {@code setting required|profile debezium|producer KEY=VALUE}
 *     for every setting given explicitly (all others are Debezium's and Kafka's defaults);
 * <li>{@code started}: the engine polls and a walsender streams the slot to it;
 * <li>{@code acked N EPOCH_MS} every ~100 ms while N (records acknowledged by Kafka) grows;
 * <li>{@code drained N SECONDS EPOCH_MS} once N reached --expect: seconds from the engine's
 *     start to that ack, and when it came;
 * <li>{@code stopped N} after a clean stop on SIGTERM/SIGINT (exit 0), or
 *     {@code failed MESSAGE} when the engine failed (exit 1).
 * </ul>
 * Logs go to stderr.
 */
public final class DebeziumBench {

    private static final long REPORT_INTERVAL_MS = 100;

    private static volatile boolean stopRequested;
    private static volatile boolean pollingStarted;
    private static volatile boolean engineDone;
    private static volatile boolean engineFailed;
    private static volatile String engineMessage;
    private static volatile Throwable engineError;

    private DebeziumBench() {
    }

    public static void main(String[] argv) throws Exception {
        // SIGTERM and SIGINT stop the engine cleanly (exit 0) instead of the JVM's exit 143.
        sun.misc.Signal.handle(new sun.misc.Signal("TERM"), signal -> stopRequested = true);
        sun.misc.Signal.handle(new sun.misc.Signal("INT"), signal -> stopRequested = true);
        setLoggingDefaults();
        final Map<String, String> args = parseArgs(argv);
        final String profile = args.getOrDefault("profile", "default");
        if (!profile.equals("default") && !profile.equals("tuned")) {
            throw new IllegalArgumentException("--profile must be default or tuned, got " + profile);
        }
        final String bootstrap = required(args, "bootstrap");
        final String prefix = required(args, "topic-prefix");
        final long expect = Long.parseLong(args.getOrDefault("expect", "0"));
        final List<String> topics = new ArrayList<>();
        for (String type : args.getOrDefault("aggregate-types", "order,payment,customer").split(",")) {
            topics.add(prefix + ".outbox.event." + type.trim());
        }

        // Settings needed for correctness and routing, then the profile's on top.
        final Map<String, String> engineRequired = engineRequired(args, prefix);
        final Map<String, String> producerRequired = new LinkedHashMap<>();
        producerRequired.put(ProducerConfig.ACKS_CONFIG, "all");
        producerRequired.put(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, "true");
        final Map<String, String> engineProfile = new LinkedHashMap<>();
        final Map<String, String> producerProfile = new LinkedHashMap<>();
        if (profile.equals("tuned")) {
            // Return a batch after 5 ms instead of waiting up to 500 ms for a full one.
            engineProfile.put("poll.interval.ms", "5");
            engineProfile.put("max.batch.size", "8192");
            engineProfile.put("max.queue.size", "32768");
            // Commit offsets (and flush the slot's LSN) every second instead of every minute.
            engineProfile.put("offset.flush.interval.ms", "1000");
            producerProfile.put(ProducerConfig.LINGER_MS_CONFIG, "1");
            producerProfile.put(ProducerConfig.BATCH_SIZE_CONFIG, "262144");
        }
        System.out.println("profile " + profile);
        printSettings("required", "debezium", engineRequired);
        printSettings("profile", "debezium", engineProfile);
        printSettings("required", "producer", producerRequired);
        printSettings("profile", "producer", producerProfile);

        createTopics(bootstrap, topics, Integer.parseInt(args.getOrDefault("partitions", "3")),
                Short.parseShort(args.getOrDefault("replication-factor", "1")));

        final Properties producerProps = new Properties();
        producerProps.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        producerProps.put(ProducerConfig.CLIENT_ID_CONFIG, "debezium-bench-" + prefix);
        producerProps.putAll(producerRequired);
        producerProps.putAll(producerProfile);
        final KafkaProducer<byte[], byte[]> producer = new KafkaProducer<>(producerProps,
                new ByteArraySerializer(), new ByteArraySerializer());
        // Fetch the topics' metadata now, so the first batch does not wait for it.
        for (String topic : topics) {
            producer.partitionsFor(topic);
        }
        final KafkaBatchSink sink = new KafkaBatchSink(producer, expect);

        final Properties engineProps = new Properties();
        engineProps.putAll(engineRequired);
        engineProps.putAll(engineProfile);
        final DebeziumEngine<ChangeEvent<Object, Object>> engine = DebeziumEngine
                .create(ClientProvided.class, ClientProvided.class, ClientProvided.class,
                        "io.debezium.embedded.async.ConvertingAsyncEngineBuilderFactory")
                .using(engineProps)
                .using(new DebeziumEngine.ConnectorCallback() {
                    @Override
                    public void pollingStarted() {
                        pollingStarted = true;
                    }
                })
                .using((success, message, error) -> {
                    engineFailed = !success;
                    engineMessage = message;
                    engineError = error;
                    engineDone = true;
                })
                .notifying(sink)
                .build();

        if (stopRequested) {
            producer.close(Duration.ofSeconds(30));
            System.out.println("stopped 0");
            System.exit(0);
        }

        final long engineStartNanos = System.nanoTime();
        System.out.println("timing jvm_to_engine_ms=" + (System.currentTimeMillis()
                - ManagementFactory.getRuntimeMXBean().getStartTime()));
        final Thread engineThread = new Thread(engine, "debezium-engine");
        engineThread.start();
        final Thread startedWatch = new Thread(() -> watchStreaming(args, engineStartNanos), "started-watch");
        startedWatch.setDaemon(true);
        startedWatch.start();

        long reported = 0;
        boolean drainedPrinted = false;
        while (!stopRequested && !engineDone) {
            Thread.sleep(REPORT_INTERVAL_MS);
            final long acked = sink.acked();
            if (acked != reported) {
                reported = acked;
                System.out.println("acked " + acked + " " + System.currentTimeMillis());
            }
            final long drainedAt = sink.drainedAtNanos();
            if (!drainedPrinted && drainedAt != 0) {
                drainedPrinted = true;
                final long drainedEpochMs = System.currentTimeMillis() - (System.nanoTime() - drainedAt) / 1_000_000;
                System.out.printf("drained %d %.3f %d%n", acked, (drainedAt - engineStartNanos) / 1e9, drainedEpochMs);
            }
        }

        if (!engineDone) {
            closeEngine(engine);
        }
        engineThread.join(TimeUnit.MINUTES.toMillis(3));
        producer.close(Duration.ofSeconds(30));
        if (engineFailed && !(stopRequested && isShutdownRace(engineError))) {
            System.out.println("failed " + engineMessage);
            System.err.println("the Debezium engine failed: " + engineMessage);
            if (engineError != null) {
                engineError.printStackTrace();
            }
            System.exit(1);
        }
        if (!stopRequested) {
            System.out.println("failed the engine stopped by itself: " + engineMessage);
            System.exit(1);
        }
        System.out.println("stopped " + sink.acked());
        System.exit(0);
    }

    private static Map<String, String> engineRequired(Map<String, String> args, String prefix) throws Exception {
        final Path offsetsDir = Path.of(required(args, "offsets-dir"));
        Files.createDirectories(offsetsDir);
        final Map<String, String> c = new LinkedHashMap<>();
        c.put("name", "debezium-bench-" + prefix);
        c.put("connector.class", "io.debezium.connector.postgresql.PostgresConnector");
        c.put("offset.storage", "org.apache.kafka.connect.storage.FileOffsetBackingStore");
        c.put("offset.storage.file.filename", offsetsDir.resolve("offsets.dat").toString());
        c.put("database.hostname", required(args, "pg-host"));
        c.put("database.port", required(args, "pg-port"));
        c.put("database.user", args.getOrDefault("user", "postgres"));
        c.put("database.dbname", required(args, "db"));
        c.put("topic.prefix", prefix);
        c.put("plugin.name", "pgoutput");
        c.put("slot.name", required(args, "slot"));
        c.put("publication.name", required(args, "publication"));
        c.put("publication.autocreate.mode", "disabled");
        c.put("snapshot.mode", "no_data");
        c.put("table.include.list", "public.outbox");
        // Since 3.2 every record carries four __debezium.context.* headers (~200 bytes, as
        // much as the payload); off, so the records are the relay's: the id header only.
        c.put("extended.headers.enabled", "false");
        c.put("transforms", "outbox");
        c.put("transforms.outbox.type", "io.debezium.transforms.outbox.EventRouter");
        c.put("transforms.outbox.route.topic.replacement", prefix + ".outbox.event.${routedByValue}");
        // Kafka Connect's own converters: key and value (aggregateid, the payload's JSON
        // text) as UTF-8 strings, headers (id) as their string form.
        c.put("key.converter.class", "org.apache.kafka.connect.storage.StringConverter");
        c.put("value.converter.class", "org.apache.kafka.connect.storage.StringConverter");
        c.put("header.converter.class", "org.apache.kafka.connect.storage.SimpleHeaderConverter");
        return c;
    }

    private static void printSettings(String kind, String scope, Map<String, String> settings) {
        for (Map.Entry<String, String> e : settings.entrySet()) {
            if (!e.getKey().startsWith("database.")) {
                System.out.println("setting " + kind + " " + scope + " " + e.getKey() + "=" + e.getValue());
            }
        }
    }

    private static void createTopics(String bootstrap, List<String> topics, int partitions, short replication)
            throws Exception {
        final Properties props = new Properties();
        props.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        try (Admin admin = Admin.create(props)) {
            final List<NewTopic> newTopics = new ArrayList<>();
            for (String topic : topics) {
                newTopics.add(new NewTopic(topic, partitions, replication));
            }
            for (Map.Entry<String, ? extends org.apache.kafka.common.KafkaFuture<Void>> e : admin
                    .createTopics(newTopics).values().entrySet()) {
                try {
                    e.getValue().get(60, TimeUnit.SECONDS);
                    System.out.println("topic created " + e.getKey());
                }
                catch (ExecutionException ex) {
                    if (!(ex.getCause() instanceof TopicExistsException)) {
                        throw ex;
                    }
                    System.out.println("topic exists " + e.getKey());
                }
            }
        }
    }

    /**
     * Prints "started" once the engine polls and a walsender streams the slot (the stream
     * starts on a thread of the connector's, shortly after the engine's polling).
     */
    private static void watchStreaming(Map<String, String> args, long engineStartNanos) {
        final String url = "jdbc:postgresql://" + args.get("pg-host") + ":" + args.get("pg-port") + "/" + args.get("db");
        final Properties props = new Properties();
        props.put("user", args.getOrDefault("user", "postgres"));
        props.put("ApplicationName", "debezium-bench-started-watch");
        try {
            while (!pollingStarted) {
                if (engineDone || stopRequested) {
                    return;
                }
                Thread.sleep(20);
            }
            try (Connection c = DriverManager.getConnection(url, props);
                    PreparedStatement s = c.prepareStatement(
                            "SELECT count(*) FROM pg_replication_slots s JOIN pg_stat_activity a ON a.pid = s.active_pid"
                                    + " WHERE s.slot_name = ? AND a.backend_type = 'walsender'")) {
                s.setString(1, args.get("slot"));
                while (!engineDone && !stopRequested) {
                    try (ResultSet r = s.executeQuery()) {
                        if (r.next() && r.getLong(1) == 1) {
                            System.out.printf("timing engine_to_started_ms=%d%n",
                                    (System.nanoTime() - engineStartNanos) / 1_000_000);
                            System.out.println("started");
                            return;
                        }
                    }
                    Thread.sleep(20);
                }
            }
        }
        catch (Exception e) {
            System.err.println("could not watch the slot for its walsender: " + e);
        }
    }

    /** engine.close() is refused while the tasks start; it is retried until they did. */
    private static void closeEngine(DebeziumEngine<?> engine) throws Exception {
        final long deadline = System.nanoTime() + TimeUnit.MINUTES.toNanos(2);
        while (true) {
            try {
                engine.close();
                return;
            }
            catch (IllegalStateException e) {
                if (engineDone || System.nanoTime() > deadline) {
                    System.err.println("could not stop the engine: " + e.getMessage());
                    return;
                }
                Thread.sleep(100);
            }
        }
    }

    /**
     * The engine stops its record thread pool before it interrupts the polling thread; a batch
     * submitted in between fails with one of these. Nothing of that batch was marked processed.
     */
    private static boolean isShutdownRace(Throwable error) {
        for (Throwable t = error; t != null; t = t.getCause()) {
            if (t instanceof java.util.concurrent.RejectedExecutionException
                    || t instanceof java.util.concurrent.CancellationException
                    || t instanceof InterruptedException
                    || t instanceof org.apache.kafka.common.errors.InterruptException) {
                return true;
            }
        }
        return false;
    }

    private static void setLoggingDefaults() {
        final Map<String, String> defaults = new HashMap<>();
        defaults.put("org.slf4j.simpleLogger.defaultLogLevel", "info");
        // Kafka's clients and Connect runtime print every config they parse at INFO.
        defaults.put("org.slf4j.simpleLogger.log.org.apache.kafka", "warn");
        // Debezium's per-event lag statistics warn for every event their queue drops when
        // the statistics thread falls behind (a busy machine): thousands of lines.
        defaults.put("org.slf4j.simpleLogger.log.io.debezium.metrics.stats.MeasurementCollector", "error");
        defaults.put("org.slf4j.simpleLogger.showDateTime", "true");
        defaults.put("org.slf4j.simpleLogger.dateTimeFormat", "HH:mm:ss.SSS");
        defaults.put("org.slf4j.simpleLogger.logFile", "System.err");
        defaults.forEach((k, v) -> {
            if (System.getProperty(k) == null) {
                System.setProperty(k, v);
            }
        });
    }

    private static Map<String, String> parseArgs(String[] argv) {
        final Map<String, String> args = new HashMap<>();
        for (int i = 0; i < argv.length; i += 2) {
            if (!argv[i].startsWith("--") || i + 1 >= argv.length) {
                throw new IllegalArgumentException("expected --name value pairs, got " + String.join(" ", argv));
            }
            args.put(argv[i].substring(2), argv[i + 1]);
        }
        return args;
    }

    private static String required(Map<String, String> args, String name) {
        final String value = args.get(name);
        if (value == null || value.isEmpty()) {
            throw new IllegalArgumentException("missing --" + name);
        }
        return value;
    }
}
