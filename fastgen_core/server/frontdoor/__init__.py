"""The front door process (``fastgen serve``): HTTP in front, replica processes behind.

main.py (the process: bind, start the replicas, serve, stop), drain.py (SIGTERM: not ready at once, in-flight
requests finish, then exit 0), router.py (each request to the least-busy healthy replica, answers relayed byte
for byte), supervisor.py (ReplicaSet: start, watch, restart, stop the replica processes), replica_handle.py (the
front door's handle on one replica process: its process, HTTP client and health), lifecycle.py (a replica's
states and allowed transitions), placement.py (which devices each replica gets), metrics.py (the replicas'
metrics merged), settings.py and deployment.py (``serve()``, ``client()`` and the records that find a running
deployment). The replica process itself is ../replica/.
"""
