// Package charttest proves the wsgate Helm chart without a cluster: it renders
// charts/wsgate with every ci/*-values.yaml through Helm's own engine, decodes
// each document strictly into the k8s.io/api type of its kind (unknown or
// misspelled fields fail), checks the chart's invariants, and runs the built
// `wsgate check-config` with the rendered arguments and environment, so a
// value the binary does not understand fails the test.
//
// It is a module of its own so that Helm and the Kubernetes types stay out of
// the product's go.mod. Run it with `make chart-test`, or
// `cd charts/test && WSGATE_BIN=../../bin/wsgate go test ./...` (without
// WSGATE_BIN the test builds the binary itself).
package charttest
