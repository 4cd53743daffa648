variable "project_id" {
  description = "Project that holds the service, topics, subscriptions and service accounts."
  type        = string
}

variable "region" {
  description = "Cloud Run region (also Cloud Scheduler's and Firestore's unless set apart)."
  type        = string
}

variable "name" {
  description = "Cloud Run service name; prefix of the service accounts (keep it short)."
  type        = string
  default     = "lrobridge"
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{2,19}$", var.name))
    error_message = "name: 3-20 lowercase letters, digits or '-', starting with a letter."
  }
}

variable "image" {
  description = "Container image built from the repository's Dockerfile."
  type        = string
}

variable "watch_mode" {
  description = "pubsub: watches are messages on the watch topic, instances scale to zero; poller: the in-process watcher, which needs CPU between requests (instance-based billing, one instance always up)."
  type        = string
  default     = "pubsub"
  validation {
    condition     = contains(["pubsub", "poller", "tasks"], var.watch_mode)
    error_message = "watch_mode is pubsub or poller."
  }
}

variable "store" {
  description = "firestore: a Firestore database shared by every instance; sqlite: a file inside the one instance (lost when it stops), for trying things out."
  type        = string
  default     = "firestore"
  validation {
    condition     = contains(["firestore", "sqlite"], var.store)
    error_message = "store is firestore or sqlite."
  }
}

variable "firestore_database" {
  description = "Firestore database id created when store = firestore."
  type        = string
  default     = "lrobridge"
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{2,61}[a-z0-9]$", var.firestore_database))
    error_message = "firestore_database is 4-63 of a-z, 0-9 and -, starting with a letter and ending with a letter or digit."
  }
}

variable "firestore_location" {
  description = "Firestore location (a region or multi-region); empty means var.region."
  type        = string
  default     = ""
}

variable "completion_topic" {
  description = "Topic completions are published to (LROBRIDGE_TOPIC)."
  type        = string
  default     = "lro-completed"
}

variable "completion_subscription" {
  description = "Push subscription of the completion topic to POST /pubsub/push."
  type        = string
  default     = "lro-completed-push"
}

variable "watch_topic" {
  description = "Topic of watch messages (LROBRIDGE_WATCH_TOPIC); unused in poller mode."
  type        = string
  default     = "lro-watch"
}

variable "watch_subscription" {
  description = "Push subscription of the watch topic to POST /pubsub/watch."
  type        = string
  default     = "lro-watch-push"
}

variable "dead_letter_topic" {
  description = "Topic for messages that exhausted their deliveries; a pull subscription keeps them."
  type        = string
  default     = "lro-dead-letter"
}

variable "watch_min_backoff_seconds" {
  description = "Shortest wait between two polls of a pending operation (the watch subscription's retry policy)."
  type        = number
  default     = 10
  validation {
    condition     = var.watch_min_backoff_seconds >= 1 && var.watch_min_backoff_seconds <= 600
    error_message = "watch_min_backoff_seconds is 1-600 (lrobridge bounds delivery counts with it)."
  }
}

variable "watch_max_backoff_seconds" {
  description = "Longest wait between two polls of a pending operation."
  type        = number
  default     = 600
  validation {
    condition     = var.watch_max_backoff_seconds >= 1 && var.watch_max_backoff_seconds <= 600
    error_message = "watch_max_backoff_seconds is at most 600 (Pub/Sub's limit)."
  }
}

variable "watch_max_delivery_attempts" {
  description = "Deliveries of one watch message before dead-lettering; lrobridge republishes the watch before that."
  type        = number
  default     = 100
  validation {
    condition     = var.watch_max_delivery_attempts >= 5 && var.watch_max_delivery_attempts <= 100
    error_message = "watch_max_delivery_attempts is 5-100."
  }
}

variable "completion_max_delivery_attempts" {
  description = "Deliveries of one completion to /pubsub/push before it is dead-lettered."
  type        = number
  default     = 10
}

variable "payload_format" {
  description = "Completion message data: binary (protobuf) or json."
  type        = string
  default     = "binary"
}

variable "max_instances" {
  description = "Most instances with store = firestore (with sqlite there is exactly one)."
  type        = number
  default     = 10
}

variable "concurrency" {
  description = "Requests per instance: the threads of the Dockerfile's lrobridge serve command."
  type        = number
  default     = 8
}

variable "cpu" {
  description = "CPU limit of an instance."
  type        = string
  default     = "1"
}

variable "memory" {
  description = "Memory limit of an instance."
  type        = string
  default     = "512Mi"
}

variable "api_keys_secret" {
  description = "Secret Manager secret id whose latest version holds the API keys (comma-separated) accepted on /v1."
  type        = string
}

variable "page_token_key_secret" {
  description = "Secret Manager secret id whose latest version is the key page tokens are signed with (LROBRIDGE_PAGE_TOKEN_KEY, at least 16 characters): every instance must share it, so any instance serves the next page of a listing."
  type        = string
}

variable "api_invokers" {
  description = "Members allowed through Cloud Run IAM to call the /v1 API (e.g. user:you@example.com, group:ops@example.com)."
  type        = list(string)
  default     = []
}

variable "push_audience" {
  description = "Audience of the push subscriptions' OIDC tokens; empty: one derived from the name."
  type        = string
  default     = ""
}

variable "api_audience" {
  description = "Audience of Cloud Scheduler's OIDC tokens; empty: one derived from the name."
  type        = string
  default     = ""
}

variable "drain_schedule" {
  description = "Cron schedule of POST /v1/deliveries:drain (webhook deliveries due for retry)."
  type        = string
  default     = "* * * * *"
}

variable "scheduler_region" {
  description = "Cloud Scheduler region; empty means var.region."
  type        = string
  default     = ""
}

variable "deletion_protection" {
  description = "Refuse to destroy the Cloud Run service and the Firestore database."
  type        = bool
  default     = true
}

variable "labels" {
  description = "Labels for every resource that takes them."
  type        = map(string)
  default     = {}
}

variable "tasks_max_dispatches_per_second" {
  description = "Cloud Tasks: dispatch rate limit of the default watch queue and the webhook retry queue (at most 500)."
  type        = number
  default     = 50
  validation {
    condition     = var.tasks_max_dispatches_per_second > 0 && var.tasks_max_dispatches_per_second <= 500
    error_message = "Cloud Tasks accepts 0 < max_dispatches_per_second <= 500."
  }
}

variable "tasks_max_concurrent_dispatches" {
  description = "Cloud Tasks: requests in flight at once from the default watch queue and the webhook retry queue (at most 5000; keep it under max_instances * concurrency)."
  type        = number
  default     = 80
  validation {
    condition     = var.tasks_max_concurrent_dispatches >= 1 && var.tasks_max_concurrent_dispatches <= 5000
    error_message = "Cloud Tasks accepts 1..5000 concurrent dispatches."
  }
}

variable "tasks_source_queues" {
  description = "Cloud Tasks: watched source hosts that get a queue of their own, with its own rate limits (host => limits)."
  type = map(object({
    max_dispatches_per_second = number
    max_concurrent_dispatches = number
  }))
  default = {}
}

variable "tasks_max_attempts" {
  description = "Cloud Tasks: attempts of one task before Cloud Tasks drops it (the scheduled sweep takes over then)."
  type        = number
  default     = 100
}

variable "tasks_audience" {
  description = "Audience of the tasks' OIDC tokens (a Cloud Run custom audience); empty: https://NAME.PROJECT.lrobridge/tasks."
  type        = string
  default     = ""
}

variable "webhook_retry_tasks" {
  description = "Make each webhook retry a Cloud Task at its planned time (the minute drain stays as the safety net)."
  type        = bool
  default     = true
}
