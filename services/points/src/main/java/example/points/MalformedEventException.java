package example.points;

/**
 * A record that can never be applied, however often it is retried (bad headers or
 * payload). The error handler does not retry it: it dead-letters it through the outbox.
 */
public class MalformedEventException extends RuntimeException {
    public MalformedEventException(String reason) {
        super(reason);
    }
}
