"""The delivery worker: `herald job`, the program in every CronJob pod.

Imports neither kopf nor the operator.
"""
