package charttest

import (
	"testing"

	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chart/loader"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// appChart loads testdata/app, an application chart that includes
// wsgate.sidecar the way README.md's "Deploy on Kubernetes" shows, with charts/wsgate as
// its dependency (added in memory, as `helm dependency update` would).
func appChart(t *testing.T) *chart.Chart {
	t.Helper()
	app, err := loader.Load("testdata/app")
	if err != nil {
		t.Fatalf("load testdata/app: %v", err)
	}
	gate, err := loader.Load(chartDir)
	if err != nil {
		t.Fatalf("load chart: %v", err)
	}
	app.AddDependency(gate)
	return app
}

// TestIncludeInAppChart renders the include example as a regular and as a
// native sidecar and checks the pod the including chart ends up with.
func TestIncludeInAppChart(t *testing.T) {
	for _, tc := range []struct {
		name     string
		override string
		native   bool
	}{
		{"regular", ``, false},
		{"native", `{wsgate: {sidecar: {native: true}}}`, true},
		{"jwt key from a ConfigMap", `{wsgate: {gate: {auth: {jwtKey: {existingConfigMap: chat-jwks}}}}}`, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			vals := values(t, "testdata/app/values.yaml", tc.override)
			m, err := tryRender(t, appChart(t), vals, true)
			if err != nil {
				t.Fatal(err)
			}
			dep := m.get(t, "Deployment", "ci-legacy-chat").(*appsv1.Deployment)
			tpl := &dep.Spec.Template
			g := checkGatePod(t, tpl)
			if g.Native != tc.native {
				t.Errorf("native: got %v, want %v", g.Native, tc.native)
			}
			checkContainerSecurity(t, "gate", g.C.SecurityContext)
			if tpl.Spec.EnableServiceLinks == nil || *tpl.Spec.EnableServiceLinks {
				t.Error("enableServiceLinks must be false")
			}
			for _, vm := range g.C.VolumeMounts {
				found := false
				for _, v := range tpl.Spec.Volumes {
					found = found || v.Name == vm.Name
				}
				if !found {
					t.Errorf("gate mount %s: the included wsgate.volumes has no such volume", vm.Name)
				}
			}
			svc := m.get(t, "Service", "ci-legacy-chat").(*corev1.Service)
			for _, p := range svc.Spec.Ports {
				if c, name, ok := podPort(&tpl.Spec, p.TargetPort); !ok || c != gateContainer || name != gatePort {
					t.Errorf("Service port %s targets %s/%s, want the gate's %s", p.Name, c, name, gatePort)
				}
			}
			if want := "http://127.0.0.1:3000"; g.last("upstream", "") != want {
				t.Errorf("--upstream=%s, want %s", g.last("upstream", ""), want)
			}

			// The subchart itself renders only what was enabled: the PodMonitor
			// on the app's pods, no Deployment or Service of its own.
			for _, d := range m.Docs {
				switch d.Kind {
				case "PodMonitor":
					checkPodMonitor(t, d.Obj.(*unstructured.Unstructured), tpl.Labels)
				case "Deployment", "Service":
					if d.Name != "ci-legacy-chat" {
						t.Errorf("sidecar mode rendered %s/%s", d.Kind, d.Name)
					}
				}
			}

			if code, out := checkConfig(t, &tpl.Spec, g.C); code != 0 || out != "" {
				t.Errorf("wsgate check-config %v: exit %d: %s", g.C.Args, code, out)
			}
		})
	}
}
