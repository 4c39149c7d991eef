"""The Herald operator: NotificationCampaigns into CronJobs, RBAC and status."""
