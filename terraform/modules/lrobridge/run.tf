resource "google_cloud_run_v2_service" "bridge" {
  project             = var.project_id
  name                = var.name
  location            = var.region
  ingress             = "INGRESS_TRAFFIC_ALL"
  deletion_protection = var.deletion_protection
  custom_audiences    = [local.push_audience, local.api_audience, local.tasks_audience]
  labels              = var.labels

  template {
    service_account                  = google_service_account.bridge.email
    max_instance_request_concurrency = var.concurrency
    timeout                          = "300s"
    labels                           = var.labels

    scaling {
      min_instance_count = local.min_instances
      max_instance_count = local.max_instances
    }

    containers {
      image = var.image

      ports {
        container_port = 8080
      }

      resources {
        limits = {
          cpu    = var.cpu
          memory = var.memory
        }
        cpu_idle          = local.cpu_idle
        startup_cpu_boost = true
      }

      dynamic "env" {
        for_each = local.environment
        content {
          name  = env.key
          value = env.value
        }
      }

      env {
        name = "LROBRIDGE_API_KEYS"
        value_source {
          secret_key_ref {
            secret  = var.api_keys_secret
            version = "latest"
          }
        }
      }

      env {
        name = "LROBRIDGE_PAGE_TOKEN_KEY"
        value_source {
          secret_key_ref {
            secret  = var.page_token_key_secret
            version = "latest"
          }
        }
      }

      startup_probe {
        http_get {
          path = "/healthz"
        }
        period_seconds    = 2
        timeout_seconds   = 2
        failure_threshold = 15
      }

      liveness_probe {
        http_get {
          path = "/healthz"
        }
        period_seconds = 30
      }
    }
  }

  depends_on = [
    google_secret_manager_secret_iam_member.bridge_reads_api_keys,
    google_secret_manager_secret_iam_member.bridge_reads_page_token_key,
    google_project_iam_member.bridge_uses_firestore,
    google_firestore_database.store,
    google_firestore_index.store, # list and claim queries fail until their indexes exist
  ]
}

# Who may call the service (Cloud Run IAM checks every request's ID token).
resource "google_cloud_run_v2_service_iam_member" "pusher_invokes" {
  project  = var.project_id
  location = var.region
  name     = google_cloud_run_v2_service.bridge.name
  role     = "roles/run.invoker"
  member   = "serviceAccount:${google_service_account.pusher.email}"
}

resource "google_cloud_run_v2_service_iam_member" "scheduler_invokes" {
  project  = var.project_id
  location = var.region
  name     = google_cloud_run_v2_service.bridge.name
  role     = "roles/run.invoker"
  member   = "serviceAccount:${google_service_account.scheduler.email}"
}

resource "google_cloud_run_v2_service_iam_member" "api_invokers" {
  for_each = toset(var.api_invokers)
  project  = var.project_id
  location = var.region
  name     = google_cloud_run_v2_service.bridge.name
  role     = "roles/run.invoker"
  member   = each.value
}
