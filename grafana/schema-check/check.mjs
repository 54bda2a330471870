// Type-checks the dashboards against @grafana/schema: each dashboard as a `Dashboard`, each
// panel's options as its panel plugin's `Options`. Object literals get TypeScript's excess
// property checks, so an unknown or misspelled field is an error, not just a wrong type.
// Run by tests/dashboards.rs after `npm ci` in this directory.
import { readFileSync, writeFileSync, readdirSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const dir = join(here, '..', 'dashboards');
const panelOptions = {
  stat: ['StatOptions', 'stat/panelcfg/x/StatPanelCfg_types.gen'],
  timeseries: ['TimeSeriesOptions', 'timeseries/panelcfg/x/TimeSeriesPanelCfg_types.gen'],
  table: ['TableOptions', 'table/panelcfg/x/TablePanelCfg_types.gen'],
  heatmap: ['HeatmapOptions', 'heatmap/panelcfg/x/HeatmapPanelCfg_types.gen'],
  'state-timeline': ['StateTimelineOptions', 'statetimeline/panelcfg/x/StateTimelinePanelCfg_types.gen'],
};
// JSON spells enum values as strings ("absolute"), which TypeScript's string enums reject:
// Plain<T> turns every string enum into the union of its values, keeping the structure (and
// with it the excess property checks) as it is.
let ts = `import type { Dashboard } from '@grafana/schema';
type Plain<T> = T extends string ? \`\${T}\` : T extends readonly (infer U)[] ? Plain<U>[] : T extends object ? { [K in keyof T]: Plain<T[K]> } : T;
`;
for (const [name, path] of Object.values(panelOptions)) {
  ts += `import type { Options as ${name} } from '@grafana/schema/dist/esm/raw/composable/${path}';\n`;
}
const files = readdirSync(dir).filter((f) => f.endsWith('.json')).sort();
files.forEach((file, i) => {
  const dash = JSON.parse(readFileSync(join(dir, file), 'utf8'));
  ts += `\n// ${file}\nexport const dashboard${i}: Plain<Dashboard> = ${JSON.stringify(dash, null, 2)};\n`;
  for (const panel of dash.panels) {
    if (panel.type === 'row') continue;
    const entry = panelOptions[panel.type];
    if (!entry) throw new Error(`${file}: panel "${panel.title}" has type ${panel.type}, which this check does not know`);
    ts += `export const options${i}_${panel.id}: Plain<${entry[0]}> = ${JSON.stringify(panel.options, null, 2)}; // ${panel.title}\n`;
  }
});
writeFileSync(join(here, 'dashboards.gen.ts'), ts);
try {
  execFileSync(join(here, 'node_modules', '.bin', 'tsc'), ['-p', here], { stdio: 'inherit' });
} catch {
  console.error(`schema check failed for ${files.join(', ')}`);
  process.exit(1);
}
console.log(`${files.length} dashboards match @grafana/schema`);
