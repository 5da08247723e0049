"""Infrastructure shared by the Tandem services (database, Kafka, HTTP, embedded broker)."""
