//go:build tools

// The Kubernetes programs the test environment builds from their own modules
// (scripts/k8s-testenv): a real API server, and kubectl of the same release.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
