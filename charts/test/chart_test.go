package charttest

import (
	"encoding/json"
	"maps"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/yaml"
)

const (
	gateContainer = "wsgate"
	gatePort      = "wsgate"
	adminPort     = "wsgate-admin"
	gateUID       = 65532
)

// standardLabels are on every resource the chart renders.
var standardLabels = []string{
	"app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
	"app.kubernetes.io/component", "app.kubernetes.io/part-of", "app.kubernetes.io/managed-by",
	"helm.sh/chart",
}

// selectorKeys are the only labels selectors use.
var selectorKeys = []string{"app.kubernetes.io/instance", "app.kubernetes.io/name"}

// TestCIValues renders every ci/*-values.yaml and checks the chart's invariants
// on what comes out.
func TestCIValues(t *testing.T) {
	for _, file := range ciValuesFiles(t) {
		t.Run(filepath.Base(file), func(t *testing.T) {
			t.Parallel()
			m := render(t, file, renderOpts{})
			vals := values(t, file)
			checkManifests(t, m, lookup(vals, "standalone.enabled", true).(bool), intValue(lookup(vals, "replicaCount", 1)))
		})
	}
}

// checkManifests checks what holds for any render of the chart.
func checkManifests(t *testing.T, m manifests, standalone bool, replicas int) {
	t.Helper()
	if len(m.Docs) == 0 && standalone {
		t.Fatal("standalone render produced nothing")
	}
	var gateways []*appsv1.Deployment
	for _, d := range m.Docs {
		meta := objectMeta(t, d)
		checkMeta(t, d.Kind, meta)
		if dep, ok := d.Obj.(*appsv1.Deployment); ok {
			checkDeployment(t, dep)
			if dep.Labels["app.kubernetes.io/component"] == "gateway" {
				gateways = append(gateways, dep)
			}
		}
	}
	if !standalone {
		if len(gateways) != 0 || len(m.all("Service")) != 0 {
			t.Errorf("sidecar mode rendered a gateway Deployment or Service: %v", m.names())
		}
		return
	}
	if len(gateways) != 1 {
		t.Fatalf("want one gateway Deployment, got %d: %v", len(gateways), m.names())
	}
	gw := gateways[0]
	if got := int(ptrValue(gw.Spec.Replicas, 1)); got != replicas {
		t.Errorf("replicas: got %d, want %d", got, replicas)
	}
	gate := checkGatePod(t, &gw.Spec.Template)
	checkStandaloneBackend(t, &gw.Spec.Template.Spec, gate)
	checkServices(t, m, gw)
	checkNetworkPolicy(t, m, gw)
	checkPDB(t, m, gw, replicas)
	checkMonitors(t, m, gw)
	checkDashboards(t, m)
	checkDevRedis(t, m, gate)
}

func objectMeta(t *testing.T, d doc) metav1.Object {
	t.Helper()
	if u, ok := d.Obj.(*unstructured.Unstructured); ok {
		return u
	}
	o, ok := d.Obj.(metav1.Object)
	if !ok {
		t.Fatalf("%s %s has no metadata", d.Kind, d.Name)
	}
	return o
}

// checkMeta checks a resource's name and labels.
func checkMeta(t *testing.T, kind string, o metav1.Object) {
	t.Helper()
	name := o.GetName()
	if errs := validation.IsDNS1123Label(name); len(errs) > 0 {
		t.Errorf("%s name %q: %v", kind, name, errs)
	}
	checkLabels(t, kind+"/"+name, o.GetLabels())
}

func checkLabels(t *testing.T, what string, labels map[string]string) {
	t.Helper()
	for _, k := range standardLabels {
		if _, ok := labels[k]; !ok {
			t.Errorf("%s: label %s missing (have %v)", what, k, labels)
		}
	}
	for k, v := range labels {
		if errs := validation.IsQualifiedName(k); len(errs) > 0 {
			t.Errorf("%s: label key %q: %v", what, k, errs)
		}
		if errs := validation.IsValidLabelValue(v); len(errs) > 0 {
			t.Errorf("%s: label %s=%q: %v", what, k, v, errs)
		}
	}
	if labels["app.kubernetes.io/managed-by"] != "Helm" {
		t.Errorf("%s: managed-by %q", what, labels["app.kubernetes.io/managed-by"])
	}
}

// checkSelector checks that a selector uses name and instance only and
// selects the given pod labels.
func checkSelector(t *testing.T, what string, sel map[string]string, podLabels map[string]string) {
	t.Helper()
	if keys := slices.Sorted(maps.Keys(sel)); !slices.Equal(keys, selectorKeys) {
		t.Errorf("%s: selector keys %v, want %v", what, keys, selectorKeys)
	}
	for k, v := range sel {
		if podLabels[k] != v {
			t.Errorf("%s: selector %s=%s does not match pod label %q", what, k, v, podLabels[k])
		}
	}
}

func checkDeployment(t *testing.T, dep *appsv1.Deployment) {
	t.Helper()
	what := "Deployment/" + dep.Name
	if dep.Spec.Selector == nil || len(dep.Spec.Selector.MatchExpressions) > 0 {
		t.Fatalf("%s: want a matchLabels selector", what)
	}
	checkSelector(t, what, dep.Spec.Selector.MatchLabels, dep.Spec.Template.Labels)
	checkLabels(t, what+" pod template", dep.Spec.Template.Labels)
	spec := &dep.Spec.Template.Spec
	if spec.EnableServiceLinks == nil || *spec.EnableServiceLinks {
		t.Errorf("%s: enableServiceLinks must be false", what)
	}
	for _, c := range slices.Concat(spec.InitContainers, spec.Containers) {
		if errs := validation.IsDNS1123Label(c.Name); len(errs) > 0 {
			t.Errorf("%s: container name %q: %v", what, c.Name, errs)
		}
		for _, p := range c.Ports {
			if errs := validation.IsValidPortName(p.Name); len(errs) > 0 {
				t.Errorf("%s: port name %q: %v", what, p.Name, errs)
			}
		}
		checkContainerSecurity(t, what+" container "+c.Name, c.SecurityContext)
		if c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() || c.Resources.Requests.Cpu().IsZero() {
			t.Errorf("%s container %s: want cpu and memory requests and a memory limit, got %v", what, c.Name, c.Resources)
		}
		for _, vm := range c.VolumeMounts {
			if !slices.ContainsFunc(spec.Volumes, func(v corev1.Volume) bool { return v.Name == vm.Name }) {
				t.Errorf("%s container %s: mount %q has no volume", what, c.Name, vm.Name)
			}
		}
	}
	if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
		t.Errorf("%s: automountServiceAccountToken must be false: no container calls the API", what)
	}
}

// checkContainerSecurity demands the strict securityContext on the container
// itself: in sidecar mode the pod's is the including chart's.
func checkContainerSecurity(t *testing.T, what string, sc *corev1.SecurityContext) {
	t.Helper()
	if sc == nil {
		t.Errorf("%s: no securityContext", what)
		return
	}
	switch {
	case sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot:
		t.Errorf("%s: runAsNonRoot must be true", what)
	case sc.RunAsUser == nil || *sc.RunAsUser == 0:
		t.Errorf("%s: runAsUser must be a fixed non-root UID", what)
	case sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem:
		t.Errorf("%s: readOnlyRootFilesystem must be true", what)
	case sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation:
		t.Errorf("%s: allowPrivilegeEscalation must be false", what)
	case sc.Privileged != nil && *sc.Privileged:
		t.Errorf("%s: privileged", what)
	case sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") || len(sc.Capabilities.Add) > 0:
		t.Errorf("%s: capabilities must drop ALL and add none", what)
	case sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault:
		t.Errorf("%s: seccompProfile must be RuntimeDefault", what)
	}
}

// gateFound is the gate container and where it sits.
type gateFound struct {
	C      *corev1.Container
	Native bool
	Args   map[string][]string // flag -> values in order
}

// last is a flag's effective value (the last one given), or def.
func (g gateFound) last(flag, def string) string {
	if v := g.Args[flag]; len(v) > 0 {
		return v[len(v)-1]
	}
	return def
}

func findGate(t *testing.T, spec *corev1.PodSpec, name string) gateFound {
	t.Helper()
	var found []gateFound
	for i := range spec.Containers {
		if spec.Containers[i].Name == name {
			found = append(found, gateFound{C: &spec.Containers[i]})
		}
	}
	for i := range spec.InitContainers {
		if spec.InitContainers[i].Name == name {
			found = append(found, gateFound{C: &spec.InitContainers[i], Native: true})
		}
	}
	if len(found) != 1 {
		t.Fatalf("want one %q container in containers or initContainers, found %d", name, len(found))
	}
	g := found[0]
	g.Args = parseArgs(t, g.C.Args)
	return g
}

// parseArgs reads --flag=value arguments.
func parseArgs(t *testing.T, args []string) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	for _, a := range args {
		name, value, ok := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		if !strings.HasPrefix(a, "--") || !ok {
			t.Errorf("argument %q: want --flag=value", a)
			continue
		}
		out[name] = append(out[name], value)
	}
	return out
}

// checkGatePod checks the gate container of a pod template: placement, ports,
// probes, shutdown timing and the checksum annotation.
func checkGatePod(t *testing.T, tpl *corev1.PodTemplateSpec) gateFound {
	t.Helper()
	spec := &tpl.Spec
	g := findGate(t, spec, gateContainer)
	c := g.C
	if g.Native {
		if c.RestartPolicy == nil || *c.RestartPolicy != corev1.ContainerRestartPolicyAlways {
			t.Errorf("native sidecar: restartPolicy must be Always")
		}
	} else if c.RestartPolicy != nil {
		t.Errorf("regular container with restartPolicy %v", *c.RestartPolicy)
	}
	if len(c.Command) > 0 {
		t.Errorf("the image's entrypoint is the binary: want no command, got %v", c.Command)
	}

	// Named ports agree with --listen and --admin-listen.
	ports := map[string]int32{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
	}
	for name, flag := range map[string]string{gatePort: "listen", adminPort: "admin-listen"} {
		want := g.last(flag, map[string]string{"listen": ":8080", "admin-listen": ":9090"}[flag])
		if _, port, _ := strings.Cut(want, ":"); port != itoa(ports[name]) {
			t.Errorf("port %q is %d but --%s=%s", name, ports[name], flag, want)
		}
	}

	// Probes on the admin port.
	for _, p := range []struct {
		what  string
		probe *corev1.Probe
		path  string
	}{
		{"startupProbe", c.StartupProbe, "/readyz"},
		{"readinessProbe", c.ReadinessProbe, "/readyz"},
		{"livenessProbe", c.LivenessProbe, "/healthz"},
	} {
		if p.probe == nil || p.probe.HTTPGet == nil {
			t.Errorf("%s: want an httpGet probe", p.what)
			continue
		}
		if p.probe.HTTPGet.Path != p.path || p.probe.HTTPGet.Port != intstr.FromString(adminPort) {
			t.Errorf("%s: got %s on %v, want %s on %s", p.what, p.probe.HTTPGet.Path, p.probe.HTTPGet.Port.String(), p.path, adminPort)
		}
	}

	if *c.SecurityContext.RunAsUser != gateUID {
		t.Errorf("gate UID %d, want the image's %d", *c.SecurityContext.RunAsUser, gateUID)
	}

	// The pod outlives the gate's drain.
	delay := mustDuration(t, g.last("shutdown-delay", "5s"))
	spread := mustDuration(t, g.last("drain-spread", "0s"))
	grace := mustDuration(t, g.last("shutdown-grace", "25s"))
	if spec.TerminationGracePeriodSeconds == nil || time.Duration(*spec.TerminationGracePeriodSeconds)*time.Second <= delay+spread+grace {
		t.Errorf("terminationGracePeriodSeconds %v must exceed shutdown delay %v + drain spread %v + grace %v",
			ptrValue(spec.TerminationGracePeriodSeconds, 30), delay, spread, grace)
	}

	if sum := tpl.Annotations["checksum/config"]; !regexp.MustCompile(`^[0-9a-f]{64}$`).MatchString(sum) {
		t.Errorf("checksum/config annotation %q", sum)
	}
	return g
}

// checkStandaloneBackend checks that the demo backend is reachable only
// through the gate: it declares no port and the gate dials it on loopback.
func checkStandaloneBackend(t *testing.T, spec *corev1.PodSpec, g gateFound) {
	t.Helper()
	for _, c := range spec.Containers {
		if c.Name != gateContainer && len(c.Ports) > 0 {
			t.Errorf("backend container %s declares ports %v: only the gate's may be named", c.Name, c.Ports)
		}
	}
	up := g.last("upstream", "")
	if !strings.HasPrefix(up, "http://127.0.0.1:") && !strings.HasPrefix(up, "http://localhost:") {
		t.Errorf("--upstream=%s: the standalone backend listens on localhost", up)
	}
}

// podPort resolves a Service targetPort against the pod's container ports.
func podPort(spec *corev1.PodSpec, target intstr.IntOrString) (container, name string, ok bool) {
	for _, c := range slices.Concat(spec.InitContainers, spec.Containers) {
		for _, p := range c.Ports {
			if (target.Type == intstr.String && p.Name == target.StrVal) || (target.Type == intstr.Int && p.ContainerPort == target.IntVal) {
				return c.Name, p.Name, true
			}
		}
	}
	return "", "", false
}

// checkServices checks that every Service selecting the gateway pods targets
// a named port of the gate, and the client Service targets "wsgate".
func checkServices(t *testing.T, m manifests, gw *appsv1.Deployment) {
	t.Helper()
	var client int
	for _, d := range m.all("Service") {
		svc := d.Obj.(*corev1.Service)
		if svc.Labels["app.kubernetes.io/component"] == "redis" {
			continue
		}
		checkSelector(t, "Service/"+svc.Name, svc.Spec.Selector, gw.Spec.Template.Labels)
		for _, p := range svc.Spec.Ports {
			if p.TargetPort.Type != intstr.String {
				t.Errorf("Service/%s port %s: targetPort must be a port name, got %v", svc.Name, p.Name, p.TargetPort.String())
			}
			c, name, ok := podPort(&gw.Spec.Template.Spec, p.TargetPort)
			if !ok || c != gateContainer {
				t.Errorf("Service/%s port %s targets %v, which is no port of the gate (container %q)", svc.Name, p.Name, p.TargetPort.String(), c)
			}
			if svc.Labels["app.kubernetes.io/component"] == "gateway" {
				client++
				if name != gatePort {
					t.Errorf("client Service/%s targets %s, want %s", svc.Name, name, gatePort)
				}
			}
		}
	}
	if client != 1 {
		t.Errorf("want one client Service port, got %d", client)
	}
}

func checkNetworkPolicy(t *testing.T, m manifests, gw *appsv1.Deployment) {
	t.Helper()
	for _, d := range m.all("NetworkPolicy") {
		np := d.Obj.(*networkingv1.NetworkPolicy)
		checkSelector(t, "NetworkPolicy/"+np.Name, np.Spec.PodSelector.MatchLabels, gw.Spec.Template.Labels)
		if len(np.Spec.Ingress) == 0 {
			t.Errorf("NetworkPolicy/%s admits nothing", np.Name)
		}
		for _, rule := range np.Spec.Ingress {
			if len(rule.Ports) == 0 {
				t.Errorf("NetworkPolicy/%s: a rule without ports admits the backend's port too", np.Name)
			}
			for _, p := range rule.Ports {
				if p.Port == nil {
					t.Errorf("NetworkPolicy/%s: a rule admits every port", np.Name)
					continue
				}
				if c, _, ok := podPort(&gw.Spec.Template.Spec, *p.Port); !ok || c != gateContainer {
					t.Errorf("NetworkPolicy/%s admits port %v, not the gate's", np.Name, p.Port.String())
				}
			}
		}
	}
}

func checkPDB(t *testing.T, m manifests, gw *appsv1.Deployment, replicas int) {
	t.Helper()
	pdbs := m.all("PodDisruptionBudget")
	if (replicas > 1) != (len(pdbs) == 1) || len(pdbs) > 1 {
		t.Errorf("replicas %d: got %d PodDisruptionBudgets, want one exactly when replicas > 1", replicas, len(pdbs))
	}
	for _, d := range pdbs {
		pdb := d.Obj.(*policyv1.PodDisruptionBudget)
		checkSelector(t, "PodDisruptionBudget/"+pdb.Name, pdb.Spec.Selector.MatchLabels, gw.Spec.Template.Labels)
		if pdb.Spec.MaxUnavailable == nil && pdb.Spec.MinAvailable == nil {
			t.Errorf("PodDisruptionBudget/%s sets no budget", pdb.Name)
		}
	}
}

// checkMonitors checks the CRD-backed Prometheus Operator objects field by
// field: their required fields, and that they point at the gate's admin port.
func checkMonitors(t *testing.T, m manifests, gw *appsv1.Deployment) {
	t.Helper()
	for _, d := range m.all("ServiceMonitor") {
		u := d.Obj.(*unstructured.Unstructured)
		sel, _, _ := unstructured.NestedStringMap(u.Object, "spec", "selector", "matchLabels")
		eps, _, _ := unstructured.NestedSlice(u.Object, "spec", "endpoints")
		if len(sel) == 0 || len(eps) == 0 {
			t.Fatalf("ServiceMonitor/%s: spec.selector.matchLabels and spec.endpoints are required", u.GetName())
		}
		checkUnknown(t, "ServiceMonitor/"+u.GetName()+" spec", u.Object["spec"], "selector", "endpoints", "namespaceSelector", "jobLabel")
		var svc *corev1.Service
		for _, s := range m.all("Service") {
			s := s.Obj.(*corev1.Service)
			if selects(sel, s.Labels) {
				if svc != nil {
					t.Errorf("ServiceMonitor/%s selects two Services", u.GetName())
				}
				svc = s
			}
		}
		if svc == nil {
			t.Fatalf("ServiceMonitor/%s selects no Service", u.GetName())
		}
		for _, ep := range eps {
			epm := ep.(map[string]any)
			checkUnknown(t, "ServiceMonitor endpoint", epm, "port", "path", "interval", "scrapeTimeout", "scheme")
			i := slices.IndexFunc(svc.Spec.Ports, func(p corev1.ServicePort) bool { return p.Name == epm["port"] })
			if i < 0 {
				t.Fatalf("ServiceMonitor endpoint port %v is not a port of Service/%s", epm["port"], svc.Name)
			}
			if _, name, _ := podPort(&gw.Spec.Template.Spec, svc.Spec.Ports[i].TargetPort); name != adminPort || epm["path"] != "/metrics" {
				t.Errorf("ServiceMonitor scrapes %s%v, want %s/metrics", name, epm["path"], adminPort)
			}
		}
	}
	for _, d := range m.all("PodMonitor") {
		u := d.Obj.(*unstructured.Unstructured)
		checkPodMonitor(t, u, gw.Spec.Template.Labels)
	}
}

func checkPodMonitor(t *testing.T, u *unstructured.Unstructured, podLabels map[string]string) {
	t.Helper()
	sel, _, _ := unstructured.NestedStringMap(u.Object, "spec", "selector", "matchLabels")
	eps, _, _ := unstructured.NestedSlice(u.Object, "spec", "podMetricsEndpoints")
	if len(sel) == 0 || len(eps) == 0 {
		t.Fatalf("PodMonitor/%s: spec.selector.matchLabels and spec.podMetricsEndpoints are required", u.GetName())
	}
	checkUnknown(t, "PodMonitor/"+u.GetName()+" spec", u.Object["spec"], "selector", "podMetricsEndpoints", "namespaceSelector", "jobLabel")
	if podLabels != nil && !selects(sel, podLabels) {
		t.Errorf("PodMonitor/%s selector %v does not select the gate's pods %v", u.GetName(), sel, podLabels)
	}
	for _, ep := range eps {
		epm := ep.(map[string]any)
		checkUnknown(t, "PodMonitor endpoint", epm, "port", "path", "interval", "scrapeTimeout", "scheme")
		if epm["port"] != adminPort || epm["path"] != "/metrics" {
			t.Errorf("PodMonitor scrapes %v%v, want %s/metrics", epm["port"], epm["path"], adminPort)
		}
	}
}

// checkUnknown fails on fields outside the allowed ones (the CRD-backed kinds
// have no Go type here to decode into strictly).
func checkUnknown(t *testing.T, what string, obj any, allowed ...string) {
	t.Helper()
	m, ok := obj.(map[string]any)
	if !ok {
		t.Errorf("%s: want an object", what)
		return
	}
	for k := range m {
		if !slices.Contains(allowed, k) {
			t.Errorf("%s: unexpected field %q", what, k)
		}
	}
}

func selects(sel, labels map[string]string) bool {
	for k, v := range sel {
		if labels[k] != v {
			return false
		}
	}
	return len(sel) > 0
}

// dashboardMetrics must each appear in the dashboard.
var dashboardMetrics = []string{
	"holo_ws_connections_active", "holo_ws_connections_total", "holo_ws_messages_total",
	"holo_ws_message_bytes_total", "holo_ws_closes_total", "holo_ws_rate_limited_total",
	"holo_ws_limiter_decisions_total", "holo_ws_limiter_duration_seconds_bucket",
	"holo_ws_limiter_fallback_total", "holo_ws_redis_up", "holo_ws_auth_failures_total",
	"holo_ws_handshake_duration_seconds_bucket",
}

func checkDashboards(t *testing.T, m manifests) {
	t.Helper()
	for _, d := range m.all("ConfigMap") {
		cm := d.Obj.(*corev1.ConfigMap)
		if cm.Labels["app.kubernetes.io/component"] != "dashboard" {
			continue
		}
		if cm.Labels["grafana_dashboard"] != "1" {
			t.Errorf("ConfigMap/%s: the Grafana sidecar label grafana_dashboard=1 is missing", cm.Name)
		}
		var dash struct {
			Title  string `json:"title"`
			Panels []struct {
				Title   string `json:"title"`
				Type    string `json:"type"`
				Targets []struct {
					Expr string `json:"expr"`
				} `json:"targets"`
			} `json:"panels"`
		}
		if err := json.Unmarshal([]byte(cm.Data["wsgate.json"]), &dash); err != nil {
			t.Fatalf("ConfigMap/%s: wsgate.json: %v", cm.Name, err)
		}
		var exprs strings.Builder
		for _, p := range dash.Panels {
			for _, tg := range p.Targets {
				exprs.WriteString(tg.Expr + "\n")
			}
		}
		for _, name := range dashboardMetrics {
			if !strings.Contains(exprs.String(), name) {
				t.Errorf("dashboard has no panel on %s", name)
			}
		}
	}
}

// checkDevRedis checks that the dev Redis is wired to the gate and never
// selected by the gate's Service.
func checkDevRedis(t *testing.T, m manifests, g gateFound) {
	t.Helper()
	for _, d := range m.all("Deployment") {
		dep := d.Obj.(*appsv1.Deployment)
		if dep.Labels["app.kubernetes.io/component"] != "redis" {
			continue
		}
		svc := m.get(t, "Service", dep.Name).(*corev1.Service)
		if !selects(svc.Spec.Selector, dep.Spec.Template.Labels) {
			t.Errorf("Service/%s does not select the dev Redis", svc.Name)
		}
		if want := "redis://" + svc.Name + ":6379/0"; g.last("redis-url", "") != want {
			t.Errorf("gate --redis-url=%s, want %s", g.last("redis-url", ""), want)
		}
		if dep.Annotations["wsgate.holo.dev/not-for-production"] != "true" {
			t.Errorf("dev Redis is not marked not for production")
		}
	}
}

// TestMonitorsNeedTheAPI: without the monitoring.coreos.com/v1 API no
// ServiceMonitor or PodMonitor is rendered, and NOTES says so.
func TestMonitorsNeedTheAPI(t *testing.T) {
	file := filepath.Join(chartDir, "ci", "monitoring-values.yaml")
	with := render(t, file, renderOpts{})
	without := render(t, file, renderOpts{noMonitorAPI: true})
	if len(with.all("ServiceMonitor")) != 1 {
		t.Errorf("with the API: got %v", with.names())
	}
	pod := render(t, filepath.Join(chartDir, "ci", "sidecar-only-values.yaml"), renderOpts{})
	if len(pod.all("PodMonitor")) != 1 {
		t.Errorf("sidecar mode with the API: got %v", pod.names())
	}
	if n := len(without.all("ServiceMonitor")) + len(without.all("PodMonitor")); n != 0 {
		t.Errorf("without the API: %d monitors rendered", n)
	}
	if !strings.Contains(without.Notes, "no ServiceMonitor was created") {
		t.Errorf("NOTES does not say the ServiceMonitor was skipped:\n%s", without.Notes)
	}
	def := render(t, filepath.Join(chartDir, "ci", "default-values.yaml"), renderOpts{})
	if n := len(def.all("ServiceMonitor")) + len(def.all("PodMonitor")) + len(def.all("ConfigMap")); n != 0 {
		t.Errorf("defaults render monitors or dashboards: %v", def.names())
	}
}

// TestArgsPerValue checks that each value becomes the flag it documents.
func TestArgsPerValue(t *testing.T) {
	file := filepath.Join(chartDir, "ci", "default-values.yaml")
	for _, tc := range []struct {
		name     string
		override string
		want     []string // arguments that must be there
		absent   []string // flag names that must not be
		env      map[string]string
	}{
		{"defaults", ``, []string{"--listen=:8080", "--admin-listen=:9090", "--upstream=http://127.0.0.1:3000", "--identity-header=X-Auth-Subject"}, []string{"trusted-proxies", "redis-url", "jwt-hmac-secret-file", "jwks-url", "require-auth", "admin-token-file"}, nil},
		{"trusted proxies repeat", `{trustedProxies: [10.0.0.0/8, "2001:db8::/32"]}`, []string{"--trusted-proxies=10.0.0.0/8", "--trusted-proxies=2001:db8::/32"}, nil, nil},
		{"large integers stay integers", `{gate: {maxConns: 1000000}}`, []string{"--max-conns=1000000"}, nil, nil},
		{"null leaves the binary default", `{gate: {limits: {userRate: null}, protocol: {pingInterval: null}}}`, nil, []string{"user-rate", "ping-interval"}, nil},
		{"empty identity header turns it off", `{gate: {auth: {identityHeader: ""}}}`, []string{"--identity-header="}, nil, nil},
		{"ports", `{gate: {port: 8443, adminPort: 9443}}`, []string{"--listen=:8443", "--admin-listen=:9443"}, nil, nil},
		{"limits", `{gate: {limits: {userRate: 7/1s, ipConnRate: "0", shadow: true}}}`, []string{"--user-rate=7/1s", "--ip-conn-rate=0", "--shadow=true"}, nil, nil},
		{"redis url", `{gate: {redis: {url: "redis://redis:6379/0", failureMode: closed}}}`, []string{"--redis-url=redis://redis:6379/0", "--failure-mode=closed"}, nil, nil},
		{"redis secret goes to env", `{gate: {redis: {existingSecret: {name: rs, key: u}}}}`, nil, []string{"redis-url"}, map[string]string{"WSGATE_REDIS_URL": "secret rs/u"}},
		{"dev redis", `{devRedis: {enabled: true}}`, []string{"--redis-url=redis://ci-wsgate-redis:6379/0"}, nil, nil},
		{"hmac secret file", `{gate: {auth: {jwtHmacSecret: {existingSecret: s, key: k}}}}`, []string{"--jwt-hmac-secret-file=/etc/wsgate/jwt-hmac/k", "--require-auth=true"}, nil, nil},
		{"admin token file", `{gate: {admin: {tokenSecret: {existingSecret: s, key: t}}}}`, nil, []string{"admin-token-file"}, map[string]string{"WSGATE_ADMIN_TOKEN_FILE": "/etc/wsgate/admin/t"}},
		{"a jwks url requires auth", `{gate: {auth: {jwksUrl: "https://issuer/jwks.json"}}}`, []string{"--jwks-url=https://issuer/jwks.json", "--require-auth=true"}, nil, nil},
		{"requireAuth false", `{gate: {auth: {jwksUrl: "https://issuer/jwks.json", requireAuth: false}}}`, nil, []string{"require-auth"}, nil},
		{"requireAuth true without a key", `{gate: {auth: {requireAuth: true}}}`, []string{"--require-auth=true"}, nil, nil},
		{"web", `{gate: {web: {socketioPath: "", skipAuthRoutes: ["GET=^/p/"], healthPassthrough: [/healthz]}}}`, []string{"--socketio-path=", "--skip-auth-route=GET=^/p/", "--health-passthrough=/healthz"}, nil, nil},
		{"jwt key from a ConfigMap", `{gate: {auth: {jwtKey: {existingConfigMap: c}}}}`, []string{"--jwt-key-file=/etc/wsgate/jwt-key/jwks.json", "--require-auth=true"}, nil, nil},
		{"lists repeat", `{gate: {auth: {jwtAudience: [a, b], stripHeaders: [X-A], allowedOrigins: ["https://x"]}}}`, []string{"--jwt-audience=a", "--jwt-audience=b", "--strip-header=X-A", "--allowed-origins=https://x"}, nil, nil},
		{"extra args last", `{extraArgs: ["--log-level=debug"]}`, []string{"--log-level=debug"}, nil, nil},
		{"extra env", `{extraEnv: [{name: WSGATE_SHADOW, value: "true"}]}`, nil, nil, map[string]string{"WSGATE_SHADOW": "true"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			m := render(t, file, renderOpts{overrides: []string{tc.override}})
			dep := m.get(t, "Deployment", "ci-wsgate").(*appsv1.Deployment)
			g := findGate(t, &dep.Spec.Template.Spec, gateContainer)
			for _, w := range tc.want {
				if !slices.Contains(g.C.Args, w) {
					t.Errorf("want %s in %v", w, g.C.Args)
				}
			}
			for _, a := range tc.absent {
				if _, ok := g.Args[a]; ok {
					t.Errorf("--%s rendered: %v", a, g.Args[a])
				}
			}
			if tc.want != nil && tc.name == "extra args last" && g.C.Args[len(g.C.Args)-1] != tc.want[0] {
				t.Errorf("extraArgs must come last to override: %v", g.C.Args)
			}
			env := map[string]string{}
			for _, e := range g.C.Env {
				switch {
				case e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil:
					env[e.Name] = "secret " + e.ValueFrom.SecretKeyRef.Name + "/" + e.ValueFrom.SecretKeyRef.Key
				default:
					env[e.Name] = e.Value
				}
			}
			for k, v := range tc.env {
				if env[k] != v {
					t.Errorf("env %s=%q, want %q (env %v)", k, env[k], v, env)
				}
			}
		})
	}
}

// TestNativeSidecar: sidecar.native moves the gate to initContainers.
func TestNativeSidecar(t *testing.T) {
	m := render(t, filepath.Join(chartDir, "ci", "native-sidecar-values.yaml"), renderOpts{})
	dep := m.get(t, "Deployment", "ci-wsgate").(*appsv1.Deployment)
	if g := findGate(t, &dep.Spec.Template.Spec, gateContainer); !g.Native {
		t.Fatal("gate is not an init container")
	}
	if len(dep.Spec.Template.Spec.Containers) != 1 {
		t.Errorf("containers: want the backend only, got %d", len(dep.Spec.Template.Spec.Containers))
	}
}

// TestNativeSidecarNeeds129: before Kubernetes 1.29 an init container with
// restartPolicy Always is refused or, worse, run to completion first; the
// chart fails the install instead.
func TestNativeSidecarNeeds129(t *testing.T) {
	vals := values(t, filepath.Join(chartDir, "ci", "native-sidecar-values.yaml"))
	for _, tc := range []struct {
		kube string
		ok   bool
	}{{"v1.28.9", false}, {"v1.29.0", true}, {"v1.31.2", true}} {
		_, err := tryRenderOn(t, wsgateChart(t), vals, tc.kube, true)
		if tc.ok != (err == nil) || (err != nil && !strings.Contains(err.Error(), "sidecar.native needs Kubernetes 1.29")) {
			t.Errorf("Kubernetes %s: %v, want ok %v", tc.kube, err, tc.ok)
		}
	}
}

// TestNotes: trustedProxies is prominent in NOTES.
func TestNotes(t *testing.T) {
	def := render(t, filepath.Join(chartDir, "ci", "default-values.yaml"), renderOpts{})
	if !strings.Contains(def.Notes, "WARNING trustedProxies is empty") {
		t.Errorf("NOTES without the trustedProxies warning:\n%s", def.Notes)
	}
	ing := render(t, filepath.Join(chartDir, "ci", "ingress-redis-values.yaml"), renderOpts{})
	if !strings.Contains(ing.Notes, "10.42.255.0/28, fd00:42:ff::/120") || strings.Contains(ing.Notes, "WARNING trustedProxies") {
		t.Errorf("NOTES does not list the trusted proxies:\n%s", ing.Notes)
	}
	dev := render(t, filepath.Join(chartDir, "ci", "dev-redis-values.yaml"), renderOpts{})
	if !strings.Contains(dev.Notes, "development only") {
		t.Errorf("NOTES does not flag the dev Redis:\n%s", dev.Notes)
	}
}

// TestRejected: values the schema or the templates refuse.
func TestRejected(t *testing.T) {
	for _, tc := range []struct {
		override, want string
	}{
		{`{gate: {limits: {userrate: 5/1s}}}`, "userrate"},
		{`{gate: {limits: {userRate: fast}}}`, "userRate"},
		{`{gate: {redis: {failureMode: maybe}}}`, "failureMode"},
		{`{gate: {port: "8080"}}`, "port"},
		{`{gate: {protocol: {idleTimeout: 5}}}`, "idleTimeout"},
		{`{trustedProxies: "10.0.0.0/8"}`, "trustedProxies"},
		{`{standalone: {enabled: false}}`, "gate.upstream is required"},
		{`{gate: {redis: {url: "redis://r:6379", existingSecret: {name: s}}}}`, "not both"},
		{`{standalone: {enabled: false}, gate: {upstream: "http://127.0.0.1:1"}, metrics: {podMonitor: {enabled: true}}}`, "podMonitor.selector"},
		{`{metrics: {serviceMonitor: {enabled: true}, podMonitor: {enabled: true}}}`, "doubling every rate"},
		{`{gate: {web: {healthPassthrough: [health]}}}`, "healthPassthrough"},
	} {
		t.Run(tc.override, func(t *testing.T) {
			_, err := tryRender(t, wsgateChart(t), values(t, "", tc.override), true)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want an error about %s", err, tc.want)
			}
		})
	}
}

// TestNamesCutTo63 renders with a long name: every name and label fits.
func TestNamesCutTo63(t *testing.T) {
	long := strings.Repeat("a", 70)
	m := render(t, filepath.Join(chartDir, "ci", "monitoring-values.yaml"), renderOpts{overrides: []string{`{nameOverride: ` + long + `, devRedis: {enabled: true}}`}})
	checkManifests(t, m, true, 1)
}

// TestDashboardMetricsExist: every holo_ws_ metric the dashboard queries is
// defined by the metrics package (family name, or a histogram's _bucket).
func TestDashboardMetricsExist(t *testing.T) {
	src, err := filepath.Glob("../../metrics/*.go")
	if err != nil || len(src) == 0 {
		t.Skip("metrics package not found next to the chart")
	}
	defined := map[string]bool{}
	for _, f := range src {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		for _, m := range regexp.MustCompile(`Name:\s*"([a-z_]+)"`).FindAllStringSubmatch(string(readFile(t, f)), -1) {
			defined["holo_ws_"+m[1]] = true
		}
	}
	dash := string(readFile(t, filepath.Join(chartDir, "dashboards", "wsgate.json")))
	for _, used := range regexp.MustCompile(`holo_ws_[a-z_]+`).FindAllString(dash, -1) {
		if !defined[used] && !defined[strings.TrimSuffix(used, "_bucket")] {
			t.Errorf("dashboard queries %s, which the metrics package does not define", used)
		}
	}
	// Every query filters on the job variable (two Prometheus jobs scraping
	// the same pods would otherwise add up), and the pass-through HTTP and
	// build panels exist.
	var d struct {
		Templating struct {
			List []struct{ Name string } `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal([]byte(dash), &d); err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(d.Templating.List, func(v struct{ Name string }) bool { return v.Name == "job" }) {
		t.Error("the dashboard has no job variable")
	}
	exprs := regexp.MustCompile(`"expr": "((?:[^"\\]|\\.)*)"`).FindAllStringSubmatch(dash, -1)
	if len(exprs) < 10 {
		t.Fatalf("found %d queries in the dashboard", len(exprs))
	}
	for _, m := range exprs {
		if !strings.Contains(m[1], `job=~\"$job\"`) {
			t.Errorf("a query without the job filter: %s", m[1])
		}
	}
	for _, want := range []string{"holo_ws_http_requests_total", "holo_ws_build_info"} {
		if !strings.Contains(dash, want) {
			t.Errorf("no panel queries %s", want)
		}
	}
}

// lookup reads a dotted path in values, or def.
func lookup(vals map[string]any, path string, def any) any {
	var cur any = vals
	for _, k := range strings.Split(path, ".") {
		m, ok := cur.(map[string]any)
		if !ok {
			return def
		}
		if cur, ok = m[k]; !ok {
			return def
		}
	}
	if cur == nil {
		return def
	}
	return cur
}

func intValue(v any) int {
	switch n := v.(type) {
	case int:
		return n
	case int64:
		return int(n)
	case float64:
		return int(n)
	}
	return 0
}

func ptrValue[T any](p *T, def T) T {
	if p == nil {
		return def
	}
	return *p
}

func itoa(n int32) string { return strconv.Itoa(int(n)) }

func mustDuration(t *testing.T, s string) time.Duration {
	t.Helper()
	d, err := time.ParseDuration(s)
	if err != nil {
		t.Fatalf("duration %q: %v", s, err)
	}
	return d
}

// TestRulesConfigMap: gate.rules becomes a ConfigMap mounted as the gate's
// --rules-file, the rule flags are left out, and a change of the rules
// changes nothing in the pod template, so it reaches running pods without
// a rollout.
func TestRulesConfigMap(t *testing.T) {
	file := filepath.Join(chartDir, "ci", "rules-values.yaml")
	m := render(t, file, renderOpts{})
	tpl := gatePods(m)[0]
	g := findGate(t, &tpl.Spec, gateContainer)
	if got := g.Args["rules-file"]; len(got) != 1 || got[0] != "/etc/wsgate/rules/rules.yaml" {
		t.Fatalf("--rules-file %v", got)
	}
	for _, f := range []string{"user-rate", "user-block", "ip-rate", "ip-block", "user-conn-rate", "ip-conn-rate"} {
		if _, ok := g.Args[f]; ok {
			t.Errorf("--%s is passed beside the rules file", f)
		}
	}
	var cm *corev1.ConfigMap
	for _, d := range m.all("ConfigMap") {
		if c := d.Obj.(*corev1.ConfigMap); c.Name == "ci-wsgate-rules" {
			cm = c
		}
	}
	if cm == nil {
		t.Fatal("no ci-wsgate-rules ConfigMap")
	}
	var got map[string]any
	if err := yaml.Unmarshal([]byte(cm.Data["rules.yaml"]), &got); err != nil {
		t.Fatal(err)
	}
	if want := lookup(values(t, file), "gate.rules", nil); !reflect.DeepEqual(got, want) {
		t.Errorf("rules.yaml holds %v, want the values' %v", got, want)
	}
	other := render(t, file, renderOpts{overrides: []string{"gate: {rules: {rules: [{name: other, limits: [1/1s]}]}}"}})
	if a, b := tpl.Annotations["checksum/config"], gatePods(other)[0].Annotations["checksum/config"]; a != b {
		t.Error("a change of gate.rules changes the pod template's checksum: it would restart the pods")
	}
}

// TestBackendOutlivesTheDrain: the standalone backend sleeps in preStop
// through the gate's shutdown delay and drain spread, so that drained
// clients get the drain's close, not 1014 from a backend already gone; on
// a cluster without the sleep action, and with lifecycle {}, nothing.
func TestBackendOutlivesTheDrain(t *testing.T) {
	vals := func(override string) map[string]any {
		return values(t, filepath.Join(chartDir, "ci", "default-values.yaml"), override)
	}
	for _, tc := range []struct {
		name, override, kube string
		sleep                int64 // 0: no lifecycle
	}{
		{"default", `{gate: {shutdown: {delay: 5s, drainSpread: 30s}}}`, "v1.30.0", 35},
		{"before 1.30", `{gate: {shutdown: {delay: 5s, drainSpread: 30s}}}`, "v1.29.4", 0},
		{"none", `{backend: {lifecycle: {}}}`, "v1.30.0", 0},
		{"as written", `{backend: {lifecycle: {preStop: {sleep: {seconds: 7}}}}}`, "v1.30.0", 7},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := tryRenderOn(t, wsgateChart(t), vals(tc.override), tc.kube, true)
			if err != nil {
				t.Fatal(err)
			}
			dep := m.get(t, "Deployment", "ci-wsgate").(*appsv1.Deployment)
			var got int64
			for _, c := range dep.Spec.Template.Spec.Containers {
				if c.Name == "backend" && c.Lifecycle != nil && c.Lifecycle.PreStop != nil && c.Lifecycle.PreStop.Sleep != nil {
					got = c.Lifecycle.PreStop.Sleep.Seconds
				}
			}
			if got != tc.sleep {
				t.Errorf("backend preStop sleep %d s, want %d", got, tc.sleep)
			}
		})
	}
}
