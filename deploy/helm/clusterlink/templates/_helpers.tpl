{{/* The peer's name: required, as in its certificate; a DNS name of at most 63 characters
     (it is a label value too), as deploy peer checks it. */}}
{{- define "clusterlink.peer" -}}
{{- $name := required "peer.name is required: the peer's name, as its certificate names it" .Values.peer.name | toString -}}
{{- if or (gt (len $name) 63) (not (regexMatch "^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$" $name)) -}}
{{- fail (printf "peer.name %q: must be a DNS name (lowercase letters, digits, '-' and '.') of at most 63 characters" $name) -}}
{{- end -}}
{{- $name -}}
{{- end -}}

{{/* Labels every object carries (deploy.rs: labels(None)). */}}
{{- define "clusterlink.labels" -}}
app.kubernetes.io/part-of: clusterlink
clusterlink.net/peer: {{ include "clusterlink.peer" . | quote }}
{{- end -}}

{{/* Labels of one component's objects and pods: call with (list $ "cl-dataplane"). */}}
{{- define "clusterlink.componentLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/instance: {{ include "clusterlink.peer" $root | quote }}
app.kubernetes.io/name: {{ index . 1 }}
{{ include "clusterlink.labels" $root }}
{{- end -}}

{{/* Labels that select the data-plane pods. */}}
{{- define "clusterlink.dataplaneSelector" -}}
app.kubernetes.io/instance: {{ include "clusterlink.peer" . | quote }}
app.kubernetes.io/name: cl-dataplane
{{- end -}}

{{- define "clusterlink.image" -}}
{{ trimSuffix "/" .Values.image.registry }}/clusterlink:{{ .Values.image.tag }}
{{- end -}}

{{/* What both containers share after their ports; call with (list $ "cl-dataplane"). */}}
{{- define "clusterlink.containerTail" -}}
{{- $component := index . 1 -}}
readinessProbe:
  httpGet:
    path: /readyz
    port: metrics
  periodSeconds: 5
livenessProbe:
  httpGet:
    path: /healthz
    port: metrics
  periodSeconds: 10
  timeoutSeconds: 3
  failureThreshold: 3
resources:
{{- if eq $component "cl-controlplane" }}
  requests:
    cpu: 100m
    memory: 64Mi
  limits:
    cpu: "1"
    memory: 512Mi
{{- else }}
  requests:
    cpu: 250m
    memory: 64Mi
  limits:
    memory: 1Gi
{{- end }}
volumeMounts:
  - name: tls
    mountPath: /etc/clusterlink
    readOnly: true
securityContext:
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  capabilities:
    drop: [ALL]
{{- end -}}

{{/* The pod template's metadata and the pod-level spec around one container. */}}
{{- define "clusterlink.podMeta" -}}
annotations:
  prometheus.io/scrape: "true"
  prometheus.io/port: "9090"
  prometheus.io/path: /metrics
labels:
{{ include "clusterlink.componentLabels" . | indent 2 }}
{{- end -}}

{{- define "clusterlink.podSecurity" -}}
securityContext:
  runAsNonRoot: true
  runAsUser: 65532
volumes:
  - name: tls
    secret:
      secretName: cl-peer-tls
{{- end -}}
