"""What every Kafka component shares (the sink, the dead-letter topic, and the coming source and
exactly-once producers), so they configure, connect, name topics and classify errors alike.

* :mod:`~savegress_gw.kafka.connection`: brokers, SASL/TLS options, client settings, waiting for a cluster
  (bounded, or without limit with progress logs).
* :mod:`~savegress_gw.kafka.client_errors`: librdkafka's ``error_cb``: fatal, while connecting, warnings.
* :mod:`~savegress_gw.kafka.topics`: topic names, templates, on-demand creation.
* :mod:`~savegress_gw.kafka.routing`: topic and partition of each event of a batch.
* :mod:`~savegress_gw.kafka.partitioning`: murmur2, Kafka's keyed partitioner.
* :mod:`~savegress_gw.kafka.delivery`: a batch's delivery reports folded into one Outcome.
* :mod:`~savegress_gw.kafka.codec`: Kafka's record compression from the profile.
* :mod:`~savegress_gw.kafka.errors`: permanent (REJECTED) versus retriable errors.
* :mod:`~savegress_gw.kafka.logs`: librdkafka's logs and errors into structlog, rate limited.
* :mod:`~savegress_gw.kafka.headers`: the savegress headers of every record.
"""
