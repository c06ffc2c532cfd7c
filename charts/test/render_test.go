package charttest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"

	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	sigsjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

const (
	chartDir    = "../wsgate"
	releaseName = "ci"
	namespace   = "chat"
	kubeVersion = "v1.30.0"
)

// monitoringAPIs are the Prometheus Operator kinds the chart renders only
// when the cluster serves them.
var monitoringAPIs = []string{"monitoring.coreos.com/v1", "monitoring.coreos.com/v1/ServiceMonitor", "monitoring.coreos.com/v1/PodMonitor"}

// doc is one rendered manifest, decoded into the k8s.io/api type of its kind
// (or *unstructured.Unstructured for a CRD-backed kind).
type doc struct {
	Source string // template file, e.g. wsgate/templates/deployment.yaml
	Kind   string
	Name   string
	Obj    any
}

// manifests is one render: the documents and NOTES.txt.
type manifests struct {
	Docs  []doc
	Notes string
}

func (m manifests) all(kind string) []doc {
	var out []doc
	for _, d := range m.Docs {
		if d.Kind == kind {
			out = append(out, d)
		}
	}
	return out
}

func (m manifests) get(t *testing.T, kind, name string) any {
	t.Helper()
	for _, d := range m.Docs {
		if d.Kind == kind && d.Name == name {
			return d.Obj
		}
	}
	t.Fatalf("no %s %q rendered; have %v", kind, name, m.names())
	return nil
}

func (m manifests) names() []string {
	var out []string
	for _, d := range m.Docs {
		out = append(out, d.Kind+"/"+d.Name)
	}
	return out
}

var (
	loadOnce  sync.Once
	loaded    *chart.Chart
	loadError error
)

// wsgateChart loads charts/wsgate once; each render gets its own copy of the
// values, so sharing the chart between parallel tests is safe.
func wsgateChart(t *testing.T) *chart.Chart {
	t.Helper()
	loadOnce.Do(func() { loaded, loadError = loader.Load(chartDir) })
	if loadError != nil {
		t.Fatalf("load chart: %v", loadError)
	}
	return loaded
}

// ciValuesFiles lists charts/wsgate/ci/*-values.yaml.
func ciValuesFiles(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(chartDir, "ci", "*-values.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no ci values files (%v)", err)
	}
	sort.Strings(files)
	return files
}

// renderOpts says how to render: extra YAML values merged over the file's
// (later wins), and whether the Prometheus Operator API is served.
type renderOpts struct {
	overrides    []string
	noMonitorAPI bool
}

// values reads a values file (empty name: none) and merges overrides on top.
func values(t *testing.T, file string, overrides ...string) map[string]any {
	t.Helper()
	vals := map[string]any{}
	if file != "" {
		v, err := chartutil.ReadValuesFile(file)
		if err != nil {
			t.Fatalf("read %s: %v", file, err)
		}
		vals = v.AsMap()
	}
	for _, o := range overrides {
		var m map[string]any
		if err := yaml.Unmarshal([]byte(o), &m); err != nil {
			t.Fatalf("override %q: %v", o, err)
		}
		vals = merge(vals, m)
	}
	return vals
}

// merge deep-merges src over dst, the way `helm -f a -f b` does.
func merge(dst, src map[string]any) map[string]any {
	out := make(map[string]any, len(dst))
	for k, v := range dst {
		out[k] = v
	}
	for k, v := range src {
		if sm, ok := v.(map[string]any); ok {
			if dm, ok := out[k].(map[string]any); ok {
				out[k] = merge(dm, sm)
				continue
			}
		}
		out[k] = v
	}
	return out
}

func capabilities(t *testing.T, kube string, withMonitoring bool) *chartutil.Capabilities {
	t.Helper()
	kv, err := chartutil.ParseKubeVersion(kube)
	if err != nil {
		t.Fatal(err)
	}
	caps := chartutil.DefaultCapabilities.Copy()
	caps.KubeVersion = *kv
	if withMonitoring {
		caps.APIVersions = append(slices.Clone(caps.APIVersions), monitoringAPIs...)
	}
	return caps
}

// render renders charts/wsgate with a ci values file the way `helm template`
// does (schema validation included) and decodes every document strictly.
func render(t *testing.T, file string, o renderOpts) manifests {
	t.Helper()
	m, err := tryRender(t, wsgateChart(t), values(t, file, o.overrides...), !o.noMonitorAPI)
	if err != nil {
		t.Fatalf("render %s: %v", filepath.Base(file), err)
	}
	return m
}

// tryRender renders a chart (with its dependencies) and decodes the output.
func tryRender(t *testing.T, ch *chart.Chart, vals map[string]any, withMonitoring bool) (manifests, error) {
	t.Helper()
	return tryRenderOn(t, ch, vals, kubeVersion, withMonitoring)
}

// tryRenderOn is tryRender on a cluster of Kubernetes version kube.
func tryRenderOn(t *testing.T, ch *chart.Chart, vals map[string]any, kube string, withMonitoring bool) (manifests, error) {
	t.Helper()
	if err := chartutil.ProcessDependenciesWithMerge(ch, vals); err != nil {
		return manifests{}, fmt.Errorf("dependencies: %w", err)
	}
	opts := chartutil.ReleaseOptions{Name: releaseName, Namespace: namespace, Revision: 1, IsInstall: true}
	rv, err := chartutil.ToRenderValues(ch, vals, opts, capabilities(t, kube, withMonitoring))
	if err != nil {
		return manifests{}, err
	}
	out, err := engine.Render(ch, rv)
	if err != nil {
		return manifests{}, err
	}
	var m manifests
	sources := make([]string, 0, len(out))
	for name := range out {
		sources = append(sources, name)
	}
	sort.Strings(sources)
	for _, src := range sources {
		content := out[src]
		switch {
		case strings.HasSuffix(src, "NOTES.txt"):
			if !strings.Contains(src, "/charts/") {
				m.Notes = content
			}
			continue
		case !strings.HasSuffix(src, ".yaml"):
			continue
		}
		for i, part := range splitDocs(content) {
			d, err := decode(part)
			if err != nil {
				return manifests{}, fmt.Errorf("%s, document %d: %w\n%s", src, i, err, part)
			}
			d.Source = src
			if cm, ok := d.Obj.(*corev1.ConfigMap); ok {
				renderedConfigMaps.Store(cm.Name, cm.Data)
			}
			m.Docs = append(m.Docs, d)
		}
	}
	return m, nil
}

// renderedConfigMaps holds the data of every ConfigMap a render made, by
// name, so that checkConfig mounts what the chart writes (the rules file)
// rather than a placeholder. Names depend only on the release, so renders
// of other values files agree on what they hold.
var renderedConfigMaps sync.Map

// splitDocs splits a YAML stream on "---" lines and drops documents that hold
// only comments or whitespace.
func splitDocs(s string) []string {
	var out []string
	for _, part := range strings.Split("\n"+s, "\n---") {
		empty := true
		for _, line := range strings.Split(part, "\n") {
			if l := strings.TrimSpace(line); l != "" && !strings.HasPrefix(l, "#") {
				empty = false
				break
			}
		}
		if !empty {
			out = append(out, part)
		}
	}
	return out
}

// types maps apiVersion/kind to the k8s.io/api type a document must decode into.
var types = map[string]func() any{
	"apps/v1/Deployment":                      func() any { return &appsv1.Deployment{} },
	"v1/Service":                              func() any { return &corev1.Service{} },
	"v1/ServiceAccount":                       func() any { return &corev1.ServiceAccount{} },
	"v1/ConfigMap":                            func() any { return &corev1.ConfigMap{} },
	"v1/Secret":                               func() any { return &corev1.Secret{} },
	"policy/v1/PodDisruptionBudget":           func() any { return &policyv1.PodDisruptionBudget{} },
	"networking.k8s.io/v1/NetworkPolicy":      func() any { return &networkingv1.NetworkPolicy{} },
	"monitoring.coreos.com/v1/ServiceMonitor": nil, // CRD: unstructured, fields checked by hand
	"monitoring.coreos.com/v1/PodMonitor":     nil,
}

// decode turns one YAML document into its typed object. Duplicate keys,
// unknown fields and fields in the wrong case fail, as with kubectl's
// strict field validation.
func decode(part string) (doc, error) {
	js, err := yaml.YAMLToJSONStrict([]byte(part))
	if err != nil {
		return doc{}, fmt.Errorf("yaml: %w", err)
	}
	var head struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
		Metadata   struct {
			Name string `json:"name"`
		} `json:"metadata"`
	}
	if err := sigsjson.UnmarshalCaseSensitivePreserveInts(js, &head); err != nil {
		return doc{}, fmt.Errorf("head: %w", err)
	}
	key := head.APIVersion + "/" + head.Kind
	newObj, known := types[key]
	if !known {
		return doc{}, fmt.Errorf("no k8s.io/api type for %s: add it to the test's types table", key)
	}
	var obj any = &unstructured.Unstructured{}
	if newObj != nil {
		obj = newObj()
	}
	if u, ok := obj.(*unstructured.Unstructured); ok {
		if err := u.UnmarshalJSON(js); err != nil {
			return doc{}, err
		}
	} else {
		strict, err := sigsjson.UnmarshalStrict(js, obj)
		if err != nil {
			return doc{}, err
		}
		if len(strict) > 0 {
			return doc{}, fmt.Errorf("strict decoding into %T: %w", obj, errorsJoin(strict))
		}
		// Round-trip: what the typed object encodes must say everything the
		// document said (catches values a custom unmarshaller silently drops).
		if err := sameJSON(js, obj); err != nil {
			return doc{}, fmt.Errorf("%T: %w", obj, err)
		}
	}
	return doc{Kind: head.Kind, Name: head.Metadata.Name, Obj: obj}, nil
}

func errorsJoin(errs []error) error {
	var b strings.Builder
	for i, e := range errs {
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(e.Error())
	}
	return fmt.Errorf("%s", b.String())
}

// sameJSON checks that every leaf of the document survives a decode/encode
// round trip through the typed object.
func sameJSON(in []byte, obj any) error {
	out, err := json.Marshal(obj)
	if err != nil {
		return err
	}
	var a, b any
	if err := sigsjson.UnmarshalCaseSensitivePreserveInts(in, &a); err != nil {
		return err
	}
	if err := sigsjson.UnmarshalCaseSensitivePreserveInts(out, &b); err != nil {
		return err
	}
	return contains(b, a, "")
}

// contains reports the first leaf of want missing or different in got.
func contains(got, want any, path string) error {
	switch w := want.(type) {
	case map[string]any:
		g, ok := got.(map[string]any)
		if !ok {
			if len(w) == 0 {
				return nil
			}
			return fmt.Errorf("%s: want an object, the typed object has %v", path, got)
		}
		for k, wv := range w {
			if err := contains(g[k], wv, path+"."+k); err != nil {
				return err
			}
		}
	case []any:
		g, ok := got.([]any)
		if !ok || len(g) != len(w) {
			if len(w) == 0 {
				return nil
			}
			return fmt.Errorf("%s: want %d items, the typed object has %v", path, len(w), got)
		}
		for i := range w {
			if err := contains(g[i], w[i], fmt.Sprintf("%s[%d]", path, i)); err != nil {
				return err
			}
		}
	case nil:
	default:
		if fmt.Sprint(got) != fmt.Sprint(want) {
			// Quantities normalise ("1" cpu stays "1", "0.5" becomes "500m"): compare those loosely.
			if gs, ok := got.(string); ok && strings.Contains(path, "resources") && gs != "" {
				return nil
			}
			return fmt.Errorf("%s: document says %v, the typed object %v", path, want, got)
		}
	}
	return nil
}

// readFile is os.ReadFile that fails the test.
func readFile(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.TrimSpace(b)
}
