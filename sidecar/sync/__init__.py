"""The synchronous API: the same library for threads, Celery/RQ workers and plain scripts.

``SyncCheckpointer`` is to ``Checkpointer`` what ``redis.Redis`` is to ``redis.asyncio.Redis``:
same config, keys, scripts, metrics, spans and errors, because both are thin shells over the
I/O-free core (:mod:`sidecar.core`); they can work on the same runs at the same time.

=====================  ==========================  =========================================
async (asyncio)        sync (threads)              what it is
=====================  ==========================  =========================================
sidecar/checkpointer   sidecar/sync/checkpointer   owns client, config, telemetry, breakers
sidecar/manager        sidecar/sync/manager        the seed's verbs for one (user, run)
sidecar/run            sidecar/sync/run            a resumable run: lease, steps, cleanup
sidecar/store          sidecar/sync/store          the only code that talks to Redis
=====================  ==========================  =========================================
"""
