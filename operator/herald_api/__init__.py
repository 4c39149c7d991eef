"""The NotificationCampaign API: models, CRD, names and delivery windows.

Shared by the operator and the delivery worker; imports neither kopf, redis nor aiosmtplib.
"""

GROUP = "herald.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
