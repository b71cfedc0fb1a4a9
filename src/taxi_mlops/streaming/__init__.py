"""Kafka streaming: the broker, topics as code, event schemas, replay, processors, logs.

Modules import confluent-kafka and Feast lazily where they can, so ``import
taxi_mlops.streaming`` stays cheap for the CLI.
"""
