"""The registry: stores members and announces them through a transactional outbox."""
