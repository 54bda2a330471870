#!/usr/bin/env python3
"""Writes the sitewatch Grafana dashboards (grafana/dashboards/*.json).

The JSON files are what users import; this script is how they are kept consistent (one
datasource variable, the same tenant/location filters, the same panel defaults). Edit here,
run `python3 grafana/generate.py`, commit both. `--check` fails if the files are stale (the
test suite runs it).
"""

import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent / "dashboards"
DS = {"type": "prometheus", "uid": "${datasource}"}
# Every per-site query carries these filters; `=~".*"` also matches series without the label.
F = 'tenant=~"$tenant",location=~"$location"'
FS = F + ',site=~"$site"'


def datasource_var():
    return {
        "name": "datasource",
        "label": "Data source",
        "type": "datasource",
        "query": "prometheus",
        "current": {"selected": False, "text": "default", "value": "default"},
        "hide": 0,
        "includeAll": False,
        "multi": False,
        "options": [],
        "refresh": 1,
        "regex": "",
        "skipUrlSync": False,
    }


def query_var(name, label, query, include_all=True, multi=True):
    v = {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "query": {"query": query, "refId": f"{name}-variable"},
        "current": {"selected": False, "text": "All", "value": "$__all"} if include_all
        else {"selected": False, "text": "", "value": ""},
        "hide": 0,
        "includeAll": include_all,
        "multi": multi,
        "options": [],
        "refresh": 2,
        "regex": "",
        "skipUrlSync": False,
        "sort": 1,
    }
    if include_all:
        v["allValue"] = ".*"
    return v


def target(expr, legend="", ref="A", instant=False, fmt="time_series"):
    t = {
        "datasource": DS,
        "expr": expr,
        "legendFormat": legend or "__auto",
        "range": not instant,
        "instant": instant,
        "refId": ref,
        "format": fmt,
    }
    return t


class Layout:
    """Places panels left to right, wrapping at Grafana's 24 columns."""

    def __init__(self):
        self.x = self.y = self.row_h = 0
        self.next_id = 1

    def place(self, panel, w, h):
        if self.x + w > 24:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        panel["gridPos"] = {"h": h, "w": w, "x": self.x, "y": self.y}
        panel["id"] = self.next_id
        self.next_id += 1
        self.x += w
        self.row_h = max(self.row_h, h)
        return panel

    def row(self, title):
        if self.x:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        panel = {
            "type": "row",
            "title": title,
            "collapsed": False,
            "panels": [],
            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y},
            "id": self.next_id,
        }
        self.next_id += 1
        self.y += 1
        return panel


def field_config(unit=None, mappings=None, thresholds=None, min_=None, max_=None, custom=None):
    defaults = {
        "color": {"mode": "thresholds" if thresholds else "palette-classic"},
        "mappings": mappings or [],
        "thresholds": {
            "mode": "absolute",
            "steps": thresholds or [{"color": "green", "value": None}],
        },
    }
    if unit:
        defaults["unit"] = unit
    if min_ is not None:
        defaults["min"] = min_
    if max_ is not None:
        defaults["max"] = max_
    if custom:
        defaults["custom"] = custom
    return {"defaults": defaults, "overrides": []}


UP_DOWN = [
    {
        "type": "value",
        "options": {
            "0": {"text": "DOWN", "color": "red", "index": 0},
            "1": {"text": "UP", "color": "green", "index": 1},
        },
    }
]
RED_GREEN = [{"color": "red", "value": None}, {"color": "green", "value": 1}]


def stat(title, expr, unit=None, mappings=None, thresholds=None, description=""):
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": [target(expr, instant=True)],
        "fieldConfig": field_config(unit, mappings, thresholds),
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "background" if thresholds else "value",
            "graphMode": "none",
            "justifyMode": "auto",
            "orientation": "auto",
            "textMode": "auto",
            "percentChangeColorMode": "standard",
            "showPercentChange": False,
            "wideLayout": True,
        },
    }


def timeseries(title, targets, unit=None, stack=False, bars=False, description="", min_=None):
    custom = {
        "drawStyle": "bars" if bars else "line",
        "lineWidth": 1,
        "fillOpacity": 60 if (stack or bars) else 10,
        "showPoints": "never",
        "spanNulls": False,
        "stacking": {"mode": "normal" if stack else "none", "group": "A"},
    }
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": targets,
        "fieldConfig": field_config(unit, custom=custom, min_=min_),
        "options": {
            "legend": {"displayMode": "table", "placement": "right", "showLegend": True, "calcs": ["lastNotNull", "max"]},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
    }


def table(title, targets, overrides, description="", sort_by=None):
    panel = {
        "type": "table",
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": targets,
        "fieldConfig": {"defaults": {"custom": {"align": "auto"}}, "overrides": overrides},
        "options": {"showHeader": True, "cellHeight": "sm", "frameIndex": 0},
        "transformations": [
            {"id": "merge", "options": {}},
            {
                "id": "organize",
                "options": {
                    "excludeByName": {"Time": True, "job": True, "instance": True, "__name__": True},
                    "renameByName": {},
                    "indexByName": {},
                },
            },
        ],
    }
    if sort_by:
        panel["options"]["sortBy"] = [{"displayName": sort_by, "desc": False}]
    return panel


def override(name, props):
    return {"matcher": {"id": "byName", "options": name}, "properties": props}


def dashboard(uid, title, description, variables, panels, tags):
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["sitewatch"] + tags,
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "weekStart": "",
        "links": [
            {
                "title": "sitewatch",
                "type": "dashboards",
                "tags": ["sitewatch"],
                "asDropdown": True,
                "includeVars": True,
                "keepTime": True,
                "icon": "external link",
                "targetBlank": False,
                "tooltip": "",
                "url": "",
            }
        ],
        "annotations": {"list": []},
        "templating": {"list": variables},
        "panels": panels,
    }


def site_filters():
    return [
        datasource_var(),
        query_var("tenant", "Tenant", "label_values(probe_success, tenant)"),
        query_var("location", "Location", "label_values(probe_success, location)"),
    ]


def overview():
    L = Layout()
    p = []
    p.append(L.row("Now"))
    p.append(L.place(stat("Sites up", f"count(max by (tenant, site) (sitewatch_site_up{{{F}}}) == 1) or vector(0)",
                          description="Sites up from at least one location, as confirmed by each site's failure_threshold and success_threshold (by default: the last probe passed)."), 4, 4))
    p.append(L.place(stat("Sites down", f"count(max by (tenant, site) (sitewatch_site_up{{{F}}}) == 0) or vector(0)",
                          thresholds=[{"color": "green", "value": None}, {"color": "red", "value": 1}],
                          description="Sites confirmed down from every location: failure_threshold failed probes in a row (by default: the last probe failed)."), 4, 4))
    p.append(L.place(stat("Probes per second",
                          f"sum(rate(sitewatch_probes_total{{{F}}}[$__rate_interval]))", unit="reqps"), 4, 4))
    p.append(L.place(stat("Failed probes (range)",
                          f'sum(increase(sitewatch_probes_total{{{F},result!="success"}}[$__range])) or vector(0)',
                          unit="short"), 4, 4))
    p.append(L.place(stat("Uptime (range)",
                          f'sum(increase(sitewatch_probes_total{{{F},result="success"}}[$__range])) / sum(increase(sitewatch_probes_total{{{F}}}[$__range]))',
                          unit="percentunit",
                          thresholds=[{"color": "red", "value": None}, {"color": "orange", "value": 0.99}, {"color": "green", "value": 0.999}]), 4, 4))
    p.append(L.place(stat("Earliest certificate expiry",
                          f"min(probe_ssl_earliest_cert_expiry{{{F}}}) - time()", unit="s",
                          thresholds=[{"color": "red", "value": None}, {"color": "orange", "value": 3 * 86400}, {"color": "green", "value": 14 * 86400}]), 4, 4))

    p.append(L.row("Sites"))
    p.append(L.place(table(
        "Every site",
        [
            target(f"max by (tenant, site, url) (sitewatch_site_up{{{F}}})", ref="A", instant=True, fmt="table"),
            target(f'sum by (tenant, site) (increase(sitewatch_probes_total{{{F},result="success"}}[$__range])) / sum by (tenant, site) (increase(sitewatch_probes_total{{{F}}}[$__range]))',
                   ref="B", instant=True, fmt="table"),
            target(f"histogram_quantile(0.95, sum by (tenant, site, le) (rate(sitewatch_probe_duration_seconds_bucket{{{F}}}[$__range])))",
                   ref="C", instant=True, fmt="table"),
            target(f"max by (tenant, site) (probe_http_status_code{{{F}}})", ref="D", instant=True, fmt="table"),
        ],
        [
            override("Value #A", [{"id": "displayName", "value": "Status"}, {"id": "mappings", "value": UP_DOWN},
                                  {"id": "custom.cellOptions", "value": {"type": "color-background"}}]),
            override("Value #B", [{"id": "displayName", "value": "Uptime"}, {"id": "unit", "value": "percentunit"},
                                  {"id": "decimals", "value": 3}]),
            override("Value #C", [{"id": "displayName", "value": "p95 latency"}, {"id": "unit", "value": "s"}]),
            override("Value #D", [{"id": "displayName", "value": "Last status code"}]),
        ],
        description="Up or down now (from any location), uptime and p95 latency over the dashboard's range, from every probe (the counters and the histogram), not only the ones a scrape saw.",
        sort_by="Status",
    ), 24, 10))
    p.append(L.place({
        "type": "state-timeline",
        "title": "Up / down",
        "datasource": DS,
        "targets": [target(f"max by (tenant, site) (probe_success{{{F}}})", legend="{{tenant}} {{site}}")],
        "fieldConfig": field_config(mappings=UP_DOWN, thresholds=RED_GREEN),
        "options": {"showValue": "never", "mergeValues": True, "alignValue": "left", "rowHeight": 0.9,
                    "legend": {"displayMode": "list", "placement": "bottom", "showLegend": False, "calcs": []},
                    "tooltip": {"mode": "single", "sort": "none"}},
    }, 24, 8))

    p.append(L.row("Latency and failures"))
    p.append(L.place(timeseries("Latency p50 / p95 / p99 (all sites)", [
        target(f"histogram_quantile({q}, sum by (le) (rate(sitewatch_probe_duration_seconds_bucket{{{F}}}[$__rate_interval])))",
               legend=f"p{int(q * 100)}", ref=r)
        for q, r in [(0.5, "A"), (0.95, "B"), (0.99, "C")]
    ], unit="s"), 12, 8))
    p.append(L.place(timeseries("p95 latency by site", [
        target(f"histogram_quantile(0.95, sum by (tenant, site, le) (rate(sitewatch_probe_duration_seconds_bucket{{{F}}}[$__rate_interval])))",
               legend="{{tenant}} {{site}}"),
    ], unit="s"), 12, 8))
    p.append(L.place(timeseries("Failures by result class", [
        target(f'sum by (result) (increase(sitewatch_probes_total{{{F},result!="success"}}[$__rate_interval]))', legend="{{result}}"),
    ], unit="short", bars=True, stack=True,
        description="dns_error, connect_error, tls_error, timeout, http_status, regex, body_too_large, denied, error"), 12, 8))
    p.append(L.place(timeseries("Failing sites", [
        target(f'sum by (tenant, site, result) (increase(sitewatch_probes_total{{{F},result!="success"}}[$__rate_interval]))',
               legend="{{tenant}} {{site}}: {{result}}"),
    ], unit="short", bars=True, stack=True), 12, 8))

    p.append(L.row("Certificates"))
    p.append(L.place(table(
        "Certificates expiring soonest",
        [target(f"bottomk(20, min by (tenant, site, url) (probe_ssl_earliest_cert_expiry{{{F}}}) - time())",
                instant=True, fmt="table")],
        [override("Value", [{"id": "displayName", "value": "Expires in"}, {"id": "unit", "value": "s"},
                            {"id": "custom.cellOptions", "value": {"type": "color-background"}},
                            {"id": "thresholds", "value": {"mode": "absolute", "steps": [
                                {"color": "red", "value": None}, {"color": "orange", "value": 3 * 86400},
                                {"color": "green", "value": 14 * 86400}]}}])],
        sort_by="Expires in",
    ), 24, 8))
    return dashboard("sitewatch-overview", "sitewatch / Overview",
                     "Every monitored site: up or down now, uptime, latency, failures, certificates.",
                     site_filters(), p, ["overview"])


def site_detail():
    L = Layout()
    p = []
    S = FS
    p.append(L.row("Now"))
    p.append(L.place(stat("Status", f"min(sitewatch_site_up{{{S}}})", mappings=UP_DOWN, thresholds=RED_GREEN,
                          description="Confirmed by the site's failure_threshold and success_threshold; by default the last probe's probe_success."), 4, 4))
    p.append(L.place(stat("Status code", f"max(probe_http_status_code{{{S}}})"), 4, 4))
    p.append(L.place(stat("Last probe took", f"max(probe_duration_seconds{{{S}}})", unit="s"), 4, 4))
    p.append(L.place(stat("Content check", f"max(probe_failed_due_to_regex{{{S}}})",
                          mappings=[{"type": "value", "options": {"0": {"text": "PASS", "color": "green", "index": 0},
                                                                  "1": {"text": "FAIL", "color": "red", "index": 1}}}],
                          thresholds=[{"color": "green", "value": None}, {"color": "red", "value": 1}]), 4, 4))
    p.append(L.place(stat("Certificate expires in", f"min(probe_ssl_earliest_cert_expiry{{{S}}}) - time()", unit="s",
                          thresholds=[{"color": "red", "value": None}, {"color": "orange", "value": 3 * 86400},
                                      {"color": "green", "value": 14 * 86400}]), 4, 4))
    p.append(L.place(stat("Uptime (range)",
                          f'sum(increase(sitewatch_probes_total{{{S},result="success"}}[$__range])) / sum(increase(sitewatch_probes_total{{{S}}}[$__range]))',
                          unit="percentunit",
                          thresholds=[{"color": "red", "value": None}, {"color": "orange", "value": 0.99}, {"color": "green", "value": 0.999}]), 4, 4))

    p.append(L.row("Timing"))
    p.append(L.place(timeseries("Phases of the last probe", [
        target(f"avg by (phase) (probe_http_duration_seconds{{{S}}})", legend="{{phase}}"),
    ], unit="s", stack=True, description="resolve, connect, tls, processing (request sent to first byte), transfer"), 12, 9))
    p.append(L.place({
        "type": "heatmap",
        "title": "Latency heat map (every probe)",
        "datasource": DS,
        "targets": [target(f"sum by (le) (increase(sitewatch_probe_duration_seconds_bucket{{{S}}}[$__rate_interval]))",
                           legend="{{le}}", fmt="heatmap")],
        "fieldConfig": {"defaults": {"custom": {"hideFrom": {"legend": False, "tooltip": False, "viz": False},
                                                "scaleDistribution": {"type": "linear"}}}, "overrides": []},
        "options": {"calculate": False, "cellGap": 1, "showValue": "auto", "color": {"mode": "scheme", "scheme": "Oranges", "steps": 64, "exponent": 0.5,
                                                                "fill": "dark-orange", "reverse": False, "scale": "exponential"},
                    "yAxis": {"axisPlacement": "left", "unit": "s", "reverse": False},
                    "rowsFrame": {"layout": "auto"}, "legend": {"show": True},
                    "tooltip": {"mode": "single", "yHistogram": False, "showColorScale": False},
                    "filterValues": {"le": 1e-9}, "exemplars": {"color": "rgba(255,0,255,0.7)"},
                    "cellValues": {"unit": "short"}},
    }, 12, 9))
    p.append(L.place(timeseries("Latency p50 / p95 / p99", [
        target(f"histogram_quantile({q}, sum by (le) (rate(sitewatch_probe_duration_seconds_bucket{{{S}}}[$__rate_interval])))",
               legend=f"p{int(q * 100)}", ref=r)
        for q, r in [(0.5, "A"), (0.95, "B"), (0.99, "C")]
    ], unit="s"), 12, 8))
    p.append(L.place(timeseries("Status code", [
        target(f"max by (location) (probe_http_status_code{{{S}}})", legend="{{location}}"),
    ]), 12, 8))

    p.append(L.row("Failures"))
    p.append(L.place(timeseries("Failure timeline by result class", [
        target(f'sum by (result) (increase(sitewatch_probes_total{{{S},result!="success"}}[$__rate_interval]))', legend="{{result}}"),
    ], unit="short", bars=True, stack=True), 12, 8))
    p.append(L.place({
        "type": "state-timeline",
        "title": "Up / down and content check",
        "datasource": DS,
        "targets": [
            target(f"min by (location) (probe_success{{{S}}})", legend="up {{location}}", ref="A"),
            target(f"1 - max by (location) (probe_failed_due_to_regex{{{S}}})", legend="content {{location}}", ref="B"),
        ],
        "fieldConfig": field_config(mappings=[{"type": "value", "options": {
            "0": {"text": "FAIL", "color": "red", "index": 0}, "1": {"text": "OK", "color": "green", "index": 1}}}],
            thresholds=RED_GREEN),
        "options": {"showValue": "never", "mergeValues": True, "alignValue": "left", "rowHeight": 0.9,
                    "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True, "calcs": []},
                    "tooltip": {"mode": "single", "sort": "none"}},
    }, 12, 8))
    p.append(L.place(timeseries("Body size, redirects, HTTP version", [
        target(f"max(probe_http_content_length{{{S}}})", legend="body bytes", ref="A"),
        target(f"max(probe_http_redirects{{{S}}})", legend="redirects", ref="B"),
        target(f"max(probe_http_version{{{S}}})", legend="HTTP version", ref="C"),
    ]), 24, 7))
    variables = site_filters() + [
        query_var("site", "Site", 'label_values(probe_success{tenant=~"$tenant"}, site)', include_all=False, multi=False)
    ]
    return dashboard("sitewatch-site", "sitewatch / Site",
                     "One site in detail: status, phases, latency heat map, failures, content check, certificate.",
                     variables, p, ["site"])


def exporter_health():
    L = Layout()
    p = []
    I = 'job=~"$job",instance=~"$instance"'
    p.append(L.row("Probing"))
    p.append(L.place(timeseries("Sites", [target(f"sum by (instance) (sitewatch_sites{{{I}}})", legend="{{instance}}")]), 8, 7))
    p.append(L.place(timeseries("Probes in flight", [target(f"sum by (instance) (sitewatch_probes_in_flight{{{I}}})", legend="{{instance}}")]), 8, 7))
    p.append(L.place(timeseries("Per-site series (what Prometheus stores)", [target(f"sum by (instance) (sitewatch_series{{{I}}})", legend="{{instance}}")]), 8, 7))
    p.append(L.place(timeseries("Schedule lag p50 / p99", [
        target(f"histogram_quantile({q}, sum by (instance, le) (rate(sitewatch_schedule_lag_seconds_bucket{{{I}}}[$__rate_interval])))",
               legend=f"p{int(q * 100)} {{{{instance}}}}", ref=r)
        for q, r in [(0.5, "A"), (0.99, "B")]
    ], unit="s", description="How late probes start after they are due. Growing lag means the exporter is short of CPU or of --probes.max-in-flight."), 12, 8))
    p.append(L.place(timeseries("Skipped probes", [
        target(f"sum by (instance) (rate(sitewatch_probes_skipped_total{{{I}}}[$__rate_interval]))", legend="{{instance}}")
    ], unit="short", description="Slots missed because a site's previous probe still ran or the exporter was overloaded."), 12, 8))

    p.append(L.row("Configuration"))
    p.append(L.place(stat("Last reload", f"min(sitewatch_config_last_reload_successful{{{I}}})",
                          mappings=[{"type": "value", "options": {"0": {"text": "FAILED", "color": "red", "index": 0},
                                                                  "1": {"text": "OK", "color": "green", "index": 1}}}],
                          thresholds=RED_GREEN), 6, 6))
    p.append(L.place(stat("Last good config loaded", f"time() - max(sitewatch_config_last_reload_success_timestamp_seconds{{{I}}})", unit="s",
                          description="Seconds since the last successful configuration load."), 6, 6))
    p.append(L.place(timeseries("Reloads by result", [
        target(f"sum by (result) (increase(sitewatch_config_reloads_total{{{I}}}[$__rate_interval]))", legend="{{result}}")
    ], unit="short", bars=True), 12, 6))

    p.append(L.row("Remote-write"))
    p.append(L.place(timeseries("Samples per second", [
        target(f"sum by (destination) (rate(sitewatch_remote_write_samples_sent_total{{{I}}}[$__rate_interval]))", legend="sent {{destination}}", ref="A"),
        target(f"sum by (destination) (rate(sitewatch_remote_write_samples_retried_total{{{I}}}[$__rate_interval]))", legend="retried {{destination}}", ref="B"),
        target(f"sum by (destination) (rate(sitewatch_remote_write_samples_failed_total{{{I}}}[$__rate_interval]))", legend="failed {{destination}}", ref="C"),
        target(f"sum by (destination) (rate(sitewatch_remote_write_samples_dropped_total{{{I}}}[$__rate_interval]))", legend="dropped {{destination}}", ref="D"),
    ], unit="short"), 12, 8))
    p.append(L.place(timeseries("Queue", [
        target(f"sum by (destination) (sitewatch_remote_write_queue_samples{{{I}}})", legend="queued {{destination}}", ref="A"),
        target(f"sum by (destination) (sitewatch_remote_write_queue_capacity_samples{{{I}}})", legend="capacity {{destination}}", ref="B"),
        target(f"time() - max by (destination) (sitewatch_remote_write_last_success_timestamp_seconds{{{I}}})", legend="seconds since last push {{destination}}", ref="C"),
    ], unit="short"), 12, 8))

    p.append(L.row("Keeper"))
    K = 'job=~"$keeper_job"'
    p.append(L.place(timeseries("Rows per second", [
        target(f"sum(rate(sitewatch_keeper_rows_written_total{{{K}}}[$__rate_interval]))", legend="written", ref="A"),
        target(f"sum(rate(sitewatch_keeper_rows_dropped_total{{{K}}}[$__rate_interval]))", legend="dropped", ref="B"),
        target(f"sum(rate(sitewatch_keeper_rows_lost_total{{{K}}}[$__rate_interval]))", legend="lost", ref="C"),
        target(f"sum(rate(sitewatch_keeper_write_errors_total{{{K}}}[$__rate_interval]))", legend="write errors", ref="D"),
    ], unit="short"), 12, 8))
    p.append(L.place(timeseries("Queue and lag", [
        target(f"sum(sitewatch_keeper_queue_rows{{{K}}})", legend="queued rows", ref="A"),
        target(f"max(sitewatch_keeper_lag_seconds{{{K}}})", legend="lag seconds", ref="B"),
    ], unit="short"), 12, 8))

    p.append(L.row("Process"))
    p.append(L.place(timeseries("CPU", [
        target(f"sum by (instance) (rate(process_cpu_seconds_total{{{I}}}[$__rate_interval]))", legend="{{instance}}")
    ], unit="percentunit"), 12, 8))
    p.append(L.place(timeseries("Resident memory", [
        target(f"sum by (instance) (process_resident_memory_bytes{{{I}}})", legend="{{instance}}")
    ], unit="bytes"), 12, 8))
    variables = [
        datasource_var(),
        query_var("job", "Job", "label_values(sitewatch_build_info, job)"),
        query_var("instance", "Instance", 'label_values(sitewatch_build_info{job=~"$job"}, instance)'),
        query_var("keeper_job", "Keeper job", "label_values(sitewatch_keeper_rows_written_total, job)"),
    ]
    return dashboard("sitewatch-exporter", "sitewatch / Exporter health",
                     "The exporters themselves: schedule, reloads, remote-write, keeper, CPU and memory.",
                     variables, p, ["health"])


def render():
    return {
        "overview.json": overview(),
        "site.json": site_detail(),
        "exporter.json": exporter_health(),
    }


def main():
    check = "--check" in sys.argv[1:]
    stale = []
    OUT.mkdir(parents=True, exist_ok=True)
    for name, dash in render().items():
        text = json.dumps(dash, indent=2) + "\n"
        path = OUT / name
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
        else:
            path.write_text(text)
    if stale:
        print("stale dashboards (run python3 grafana/generate.py):", *stale, sep="\n  ")
        sys.exit(1)


if __name__ == "__main__":
    main()
