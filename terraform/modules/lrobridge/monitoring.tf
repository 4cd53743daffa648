# Alert policies on the metrics lrobridge exports to Cloud Monitoring (OTEL_METRICS_EXPORTER=gcp:
# metric types workload.googleapis.com/<name>, names in lrobridge/telemetry/metrics.py METRICS).
# tests/unit/test_terraform.py checks that every metric named here is one the code exports.

locals {
  metric_prefix = "workload.googleapis.com"
  alerts        = var.metrics_exporter == "gcp" ? 1 : 0
}

resource "google_monitoring_alert_policy" "dead_letters_growing" {
  count                 = local.alerts
  project               = var.project_id
  display_name          = "${var.name}: webhook deliveries are being dead-lettered"
  combiner              = "OR"
  notification_channels = var.notification_channels
  documentation {
    content   = "Webhook deliveries exhausted their retries (or their endpoint is disabled). See GET /v1/deliveries?state=DEAD or the /status page, fix the receiver, then replay them."
    mime_type = "text/markdown"
  }
  conditions {
    display_name = "dead letters in the last 10 minutes"
    condition_threshold {
      filter          = "metric.type = \"${local.metric_prefix}/lrobridge.webhook.dead_letters\""
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "0s"
      aggregations {
        alignment_period     = "600s"
        per_series_aligner   = "ALIGN_DELTA"
        cross_series_reducer = "REDUCE_SUM"
      }
    }
  }
}

resource "google_monitoring_alert_policy" "webhook_disabled" {
  count                 = local.alerts
  project               = var.project_id
  display_name          = "${var.name}: a webhook endpoint is disabled"
  combiner              = "OR"
  notification_channels = var.notification_channels
  documentation {
    content   = "lrobridge disabled a webhook (HTTP 410, or failing for days). Its deliveries are dead-lettered until POST /v1/webhooks/{id}:enable and :replay."
    mime_type = "text/markdown"
  }
  conditions {
    display_name = "disabled webhook endpoints"
    condition_threshold {
      filter          = "metric.type = \"${local.metric_prefix}/lrobridge.webhook.disabled_endpoints\""
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "300s"
      aggregations {
        alignment_period     = "300s"
        per_series_aligner   = "ALIGN_MAX"
        cross_series_reducer = "REDUCE_MAX"
      }
    }
  }
}

resource "google_monitoring_alert_policy" "completion_unacknowledged" {
  count                 = local.alerts
  project               = var.project_id
  display_name          = "${var.name}: a completion is not acknowledged by Pub/Sub"
  combiner              = "OR"
  notification_channels = var.notification_channels
  documentation {
    content   = "The oldest completion in the outbox has waited longer than ${var.alert_unacknowledged_seconds}s for Pub/Sub. Check the bridge's publish errors in its log and the topic's IAM."
    mime_type = "text/markdown"
  }
  conditions {
    display_name = "oldest outbox entry age"
    condition_threshold {
      filter          = "metric.type = \"${local.metric_prefix}/lrobridge.outbox.oldest_age\""
      comparison      = "COMPARISON_GT"
      threshold_value = var.alert_unacknowledged_seconds
      duration        = "300s"
      aggregations {
        alignment_period     = "60s"
        per_series_aligner   = "ALIGN_MAX"
        cross_series_reducer = "REDUCE_MAX"
      }
    }
  }
}

resource "google_monitoring_alert_policy" "watches_failing" {
  count                 = local.alerts
  project               = var.project_id
  display_name          = "${var.name}: watches are failing at their source"
  combiner              = "OR"
  notification_channels = var.notification_channels
  documentation {
    content   = "Operations sources answered a permanent error (permission denied, unauthenticated...) and the watches stopped as FAILED. See GET /v1/watches?state=FAILED or the /status page."
    mime_type = "text/markdown"
  }
  conditions {
    display_name = "watch failures in the last 10 minutes"
    condition_threshold {
      filter          = "metric.type = \"${local.metric_prefix}/lrobridge.watch.failures\""
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "0s"
      aggregations {
        alignment_period     = "600s"
        per_series_aligner   = "ALIGN_DELTA"
        cross_series_reducer = "REDUCE_SUM"
      }
    }
  }
}
