// Validates every manifest under deploy/kubernetes against the Kubernetes API schemas
// (kubernetes-models) and the Prometheus Operator's (for PodMonitor): the JSON schema
// validation of each model (types, formats, enums, required fields), then a TypeScript check
// of each object against the model's interface, whose excess property checks make unknown
// or misspelled fields errors. Each kustomization must list files that exist.
// Run by tests/deploy.rs after `npm ci` in this directory.
import { readFileSync, readdirSync, statSync, existsSync, writeFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { join, dirname, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseAllDocuments } from 'yaml';

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, '..');

const kinds = {
  'v1/Namespace': ['kubernetes-models/v1/Namespace', 'Namespace'],
  'v1/ConfigMap': ['kubernetes-models/v1/ConfigMap', 'ConfigMap'],
  'v1/Secret': ['kubernetes-models/v1/Secret', 'Secret'],
  'v1/Service': ['kubernetes-models/v1/Service', 'Service'],
  'apps/v1/DaemonSet': ['kubernetes-models/apps/v1/DaemonSet', 'DaemonSet'],
  'apps/v1/StatefulSet': ['kubernetes-models/apps/v1/StatefulSet', 'StatefulSet'],
  'monitoring.coreos.com/v1/PodMonitor': ['@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PodMonitor', 'PodMonitor'],
};

function yamlFiles(dir) {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    if (name === 'node_modules' || name === 'check') return [];
    if (statSync(path).isDirectory()) return yamlFiles(path);
    return name.endsWith('.yaml') ? [path] : [];
  });
}

const errors = [];
let checked = 0;
const imports = new Set();
let ts = '';
for (const file of yamlFiles(root).sort()) {
  const rel = relative(root, file);
  for (const doc of parseAllDocuments(readFileSync(file, 'utf8'))) {
    if (doc.errors.length) {
      errors.push(`${rel}: ${doc.errors.join('; ')}`);
      continue;
    }
    const obj = doc.toJS();
    if (!obj) continue;
    if (obj.kind === 'Kustomization') {
      for (const r of obj.resources ?? []) {
        if (!existsSync(join(dirname(file), r))) errors.push(`${rel}: resource ${r} does not exist`);
      }
      checked++;
      continue;
    }
    const entry = kinds[`${obj.apiVersion}/${obj.kind}`];
    if (!entry) {
      errors.push(`${rel}: ${obj.apiVersion} ${obj.kind} is not a kind this check knows`);
      continue;
    }
    const mod = await import(entry[0]);
    const model = new mod[entry[1]](obj);
    try {
      model.validate();
    } catch (e) {
      errors.push(`${rel}: ${obj.kind} ${obj.metadata?.name}: ${e.message}`);
      continue;
    }
    imports.add(`import type { I${entry[1]} } from '${entry[0]}';`);
    ts += `// ${rel}\nexport const object${checked}: I${entry[1]} = ${JSON.stringify(obj, null, 2)};\n`;
    checked++;
  }
}
if (errors.length) {
  console.error(errors.join('\n'));
  process.exit(1);
}
writeFileSync(join(here, 'manifests.gen.ts'), [...imports].join('\n') + '\n' + ts);
try {
  execFileSync(join(here, 'node_modules', '.bin', 'tsc'), ['-p', here], { stdio: 'inherit' });
} catch {
  console.error('unknown or mistyped fields in the manifests (see above)');
  process.exit(1);
}
console.log(`${checked} Kubernetes objects valid`);
