"""High availability: gateway nodes in a Raft cluster; the leader runs the pipeline.

Every node runs ``savegress-gw start`` with the same profile (``ha.enabled``; ``ha.cluster`` names
this node and its peers). Each supervisor joins the cluster (:class:`~savegress_gw.ha.raft.RaftNode`)
and starts the source process and the workers only while its node leads
(:class:`~savegress_gw.ha.leadership.Leadership`); the others stand by with no pipeline.

* **Taking over.** A node that becomes leader first commits an entry of its own term (so every
  earlier committed entry is applied locally), writes the checkpoint the cluster replicated into
  its ``checkpoint.dir``, and only then starts the pipeline, which resumes from it.
* **Replicating.** While leading, the supervisor replicates the local checkpoint file through Raft
  whenever the source process rewrote it, and commits a lease entry every ``election_timeout / 4``.
  Each commit proves that no other node can lead for ``election_timeout`` from its start (the
  followers wait that long before electing another); the workers deliver only within that lease,
  so a frozen or hung supervisor cannot leave them streaming beside a new leader.
* **Standing down.** A leader that loses leadership, or cannot commit within
  ``election_timeout`` (no majority), SIGKILLs its pipeline at once.

Delivery stays at least once: a new leader replays from the last replicated checkpoint, so events
delivered after it are delivered again. Sources whose position lives outside the gateway (the
PostgreSQL slot, Kafka group offsets) resume from there; with ``exactly_once`` the new leader's
transactional producers (same ``transactional.id``) fence the old leader's.
"""
