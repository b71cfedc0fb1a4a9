"""``python -m taxi_mlops.gateway``: nothing may import prometheus_client or Feast before
``main()`` has pointed PROMETHEUS_MULTIPROC_DIR at the gateway's folder; importing ``app``
does not (both are imported lazily), and ``main()`` refuses to start if it happened."""

from taxi_mlops.gateway.app import main

if __name__ == "__main__":
    main()
