import { useState } from 'preact/hooks';
import { del, enc, get, orgPath, post, put, type Page, type ScheduleRecord, type SchedulePolicy, type SchedulePolicyInput, type ScheduleRequest } from '../api';
import { Badge, ConfirmButton, Empty, ErrorBox, Field, Loading, PageHeader, Time, ViewTabs, selectorText, splitList } from '../components';
import { useCan, useData } from '../store';
import { useChoices } from './backups';
import { selectorOf } from './locations';

export function policyText(p: SchedulePolicy): string {
  const tz = p.timeZone && p.timeZone !== 'UTC' ? ` (${p.timeZone})` : ' UTC';
  switch (p.kind) {
    case 'interval':
      return p.minutes % 60 === 0 ? `Every ${p.minutes / 60} h` : `Every ${p.minutes} min`;
    case 'daily':
      return `Daily at ${p.at}${tz}`;
    case 'weekly':
      return `Weekly on ${p.day} at ${p.at}${tz}`;
    case 'monthly':
      return `Monthly on day ${p.date} at ${p.at}${tz}`;
  }
}

const DAYS = ['monday', 'tuesday', 'wednesday', 'thursday', 'friday', 'saturday', 'sunday'];

/** The policy's fields as the form holds them (strings, as inputs give them). */
interface PolicyForm {
  kind: string;
  minutes: string;
  at: string;
  day: string;
  date: string;
  retain: string;
  timeZone: string;
}

const NEW_POLICY: PolicyForm = { kind: 'daily', minutes: '60', at: '02:00', day: 'sunday', date: '1', retain: '7', timeZone: 'UTC' };

function formOf(p: SchedulePolicy): PolicyForm {
  const f: PolicyForm = { ...NEW_POLICY, kind: p.kind, retain: String(p.retain), timeZone: p.timeZone || 'UTC' };
  if (p.kind === 'interval') f.minutes = String(p.minutes);
  if (p.kind !== 'interval') f.at = p.at;
  if (p.kind === 'weekly') f.day = p.day;
  if (p.kind === 'monthly') f.date = String(p.date);
  return f;
}

function policyOf(f: PolicyForm): SchedulePolicyInput {
  const base = { retain: Number(f.retain), timeZone: f.timeZone.trim() || 'UTC' };
  switch (f.kind) {
    case 'interval':
      return { ...base, kind: 'interval', minutes: Number(f.minutes) };
    case 'weekly':
      return { ...base, kind: 'weekly', day: f.day, at: f.at };
    case 'monthly':
      return { ...base, kind: 'monthly', date: Number(f.date), at: f.at };
    default:
      return { ...base, kind: 'daily', at: f.at };
  }
}

/** When and how many to keep: the fields of a new schedule and of a schedule's policy editor. */
function PolicyFields({ f, set, prefix }: { f: PolicyForm; set: (f: PolicyForm) => void; prefix: string }) {
  const on = (k: keyof PolicyForm) => (e: Event) => set({ ...f, [k]: (e.currentTarget as HTMLInputElement).value });
  return (
    <div class="form-row">
      <Field label="Repeat">
        <select value={f.kind} onChange={on('kind')} data-testid={`${prefix}-kind`}>
          <option value="interval">Every N minutes</option>
          <option value="daily">Daily</option>
          <option value="weekly">Weekly</option>
          <option value="monthly">Monthly</option>
        </select>
      </Field>
      {f.kind === 'interval' && (
        <Field label="Minutes" hint="1 to 525600">
          <input type="number" min={1} max={525600} required value={f.minutes} onInput={on('minutes')} data-testid={`${prefix}-minutes`} />
        </Field>
      )}
      {f.kind === 'weekly' && (
        <Field label="Day">
          <select value={f.day} onChange={on('day')}>
            {DAYS.map((d) => (
              <option key={d} value={d}>
                {d[0].toUpperCase() + d.slice(1)}
              </option>
            ))}
          </select>
        </Field>
      )}
      {f.kind === 'monthly' && (
        <Field label="Day of month" hint="1 to 31; shorter months use their last day">
          <input type="number" min={1} max={31} required value={f.date} onInput={on('date')} />
        </Field>
      )}
      {f.kind !== 'interval' && (
        <Field label="At (HH:MM)">
          <input type="time" required value={f.at} onInput={on('at')} data-testid={`${prefix}-at`} />
        </Field>
      )}
      <Field label="Time zone" hint="IANA, e.g. Europe/Berlin">
        <input value={f.timeZone} onInput={on('timeZone')} data-testid={`${prefix}-tz`} />
      </Field>
      <Field label="Keep" hint="Successful backups per cluster (1 to 1000)">
        <input type="number" min={1} max={1000} required value={f.retain} onInput={on('retain')} data-testid={`${prefix}-retain`} />
      </Field>
    </div>
  );
}

/** Changes an existing schedule's policy (when, retention, time zone). */
function PolicyEditor({ org, s, onDone }: { org: string; s: ScheduleRecord; onDone: (changed: boolean) => void }) {
  const [f, setF] = useState<PolicyForm>(() => formOf(s.policy));
  const [error, setError] = useState<unknown>();
  const [busy, setBusy] = useState(false);
  return (
    <form
      class="card form"
      data-testid="schedule-policy-form"
      aria-label={`Policy of schedule ${s.id}`}
      onSubmit={async (e) => {
        e.preventDefault();
        setBusy(true);
        setError(undefined);
        try {
          await put(orgPath(org, `/schedules/${enc(s.id)}`), { policy: policyOf(f) });
          onDone(true);
        } catch (err) {
          setError(err);
        } finally {
          setBusy(false);
        }
      }}
    >
      <h2>Policy of {s.id}</h2>
      <PolicyFields f={f} set={setF} prefix="policy" />
      <p class="muted small">The next slot follows the new policy from now; a smaller number to keep prunes at the next run.</p>
      <ErrorBox error={error} />
      <div class="form-actions">
        <button type="button" class="btn" onClick={() => onDone(false)}>
          Cancel
        </button>
        <button class="btn btn-primary" type="submit" disabled={busy} data-testid="schedule-policy-submit">
          {busy ? 'Saving…' : 'Save policy'}
        </button>
      </div>
    </form>
  );
}

function ScheduleEditor({ org, onDone }: { org: string; onDone: () => void }) {
  const choices = useChoices(org);
  const [f, setF] = useState({ name: '', namespaces: '', location: '', paused: false });
  const [pf, setPf] = useState<PolicyForm>(NEW_POLICY);
  const [assign, setAssign] = useState<{ kind: 'all' | 'labels' | 'names'; labels: string; names: string }>({ kind: 'all', labels: '', names: '' });
  const [error, setError] = useState<unknown>();
  const [busy, setBusy] = useState(false);
  const on = (k: keyof typeof f) => (e: Event) => setF({ ...f, [k]: (e.currentTarget as HTMLInputElement).value });
  return (
    <form
      class="card form"
      data-testid="schedule-form"
      onSubmit={async (e) => {
        e.preventDefault();
        setBusy(true);
        setError(undefined);
        try {
          const body: ScheduleRequest = {
            name: f.name.trim(),
            policy: policyOf(pf),
            clusters: selectorOf(assign),
            namespaces: splitList(f.namespaces),
            location: f.location || choices.data?.locations[0] || '',
            paused: f.paused,
          };
          await post(orgPath(org, '/schedules'), body);
          setF({ ...f, name: '' });
          onDone();
        } catch (err) {
          setError(err);
        } finally {
          setBusy(false);
        }
      }}
    >
      <h2>New schedule</h2>
      <div class="form-row">
        <Field label="Name" hint="A DNS label">
          <input required pattern="[a-z0-9]([-a-z0-9]*[a-z0-9])?" maxLength={63} value={f.name} onInput={on('name')} data-testid="schedule-name" />
        </Field>
        <Field label="Namespaces" hint="Separated by commas">
          <input required value={f.namespaces} onInput={on('namespaces')} data-testid="schedule-namespaces" />
        </Field>
        <Field label="Location">
          <select value={f.location} onChange={on('location')} data-testid="schedule-location">
            {(choices.data?.locations ?? []).map((l) => (
              <option key={l} value={l}>
                {l}
              </option>
            ))}
          </select>
        </Field>
      </div>
      <PolicyFields f={pf} set={setPf} prefix="schedule" />
      <fieldset class="fieldset">
        <legend>Clusters</legend>
        <div class="radios">
          {(['all', 'labels', 'names'] as const).map((k) => (
            <label key={k} class="radio">
              <input type="radio" name="schedule-assign" checked={assign.kind === k} onChange={() => setAssign({ ...assign, kind: k })} data-testid={`schedule-assign-${k}`} />
              {k === 'all' ? 'All clusters' : k === 'labels' ? 'By labels' : 'By name'}
            </label>
          ))}
        </div>
        {assign.kind === 'labels' && (
          <Field label="Labels" hint="key=value, separated by commas">
            <input value={assign.labels} onInput={(e) => setAssign({ ...assign, labels: (e.currentTarget as HTMLInputElement).value })} />
          </Field>
        )}
        {assign.kind === 'names' && (
          <Field label="Cluster names" hint="Separated by commas">
            <input value={assign.names} onInput={(e) => setAssign({ ...assign, names: (e.currentTarget as HTMLInputElement).value })} data-testid="schedule-names" />
          </Field>
        )}
      </fieldset>
      <label class="check">
        <input type="checkbox" checked={f.paused} onChange={(e) => setF({ ...f, paused: (e.currentTarget as HTMLInputElement).checked })} data-testid="schedule-paused" />
        Create paused
      </label>
      <ErrorBox error={error} />
      <div class="form-actions">
        <button class="btn btn-primary" type="submit" disabled={busy} data-testid="schedule-submit">
          {busy ? 'Creating…' : 'Create schedule'}
        </button>
      </div>
    </form>
  );
}

export function SchedulesPage({ org }: { org: string }) {
  const operator = useCan(org, 'operator');
  const [creating, setCreating] = useState(false);
  const [editing, setEditing] = useState<string | null>(null);
  const [error, setError] = useState<unknown>();
  const list = useData((signal) => get<Page<ScheduleRecord>>(orgPath(org, '/schedules'), { limit: 1000 }, signal), [org], 15000);
  const act = async (f: () => Promise<unknown>) => {
    setError(undefined);
    try {
      await f();
      list.reload();
    } catch (e) {
      setError(e);
    }
  };
  return (
    <section data-testid="schedules-page">
      <PageHeader title={`Schedules · ${org}`}>
        {operator && (
          <button type="button" class="btn btn-primary" onClick={() => setCreating(!creating)} aria-expanded={creating} data-testid="schedule-new">
            {creating ? 'Close form' : 'New schedule'}
          </button>
        )}
      </PageHeader>
      <div class="toolbar">
        <ViewTabs note="Schedules cover namespaces; the API does not tell namespace and VM schedules apart, so both tabs list all of them." />
      </div>
      {creating && operator && <ScheduleEditor org={org} onDone={() => { setCreating(false); list.reload(); }} />}
      {operator && editing && list.data?.items.find((x) => x.id === editing) && (
        <PolicyEditor
          key={editing}
          org={org}
          s={list.data.items.find((x) => x.id === editing)!}
          onDone={(changed) => {
            setEditing(null);
            if (changed) list.reload();
          }}
        />
      )}
      <ErrorBox error={list.error} />
      <ErrorBox error={error} />
      {!list.data && list.loading && <Loading what="schedules" />}
      {list.data && list.data.items.length === 0 && <Empty>No schedules yet.</Empty>}
      {list.data && list.data.items.length > 0 && (
        <div class="table-wrap">
          <table class="grid" data-testid="schedules-table">
            <thead>
              <tr>
                <th scope="col">Name</th>
                <th scope="col">When</th>
                <th scope="col" class="num">
                  Keep
                </th>
                <th scope="col">Clusters</th>
                <th scope="col">Namespaces</th>
                <th scope="col">Location</th>
                <th scope="col">State</th>
                <th scope="col">Last run</th>
                <th scope="col">Next</th>
                {operator && (
                  <th scope="col">
                    <span class="sr-only">Actions</span>
                  </th>
                )}
              </tr>
            </thead>
            <tbody>
              {list.data.items.map((s) => (
                <tr key={s.id} data-testid="schedule-row" data-id={s.id}>
                  <th scope="row" class="mono">
                    {s.id}
                  </th>
                  <td>{policyText(s.policy)}</td>
                  <td class="num">{s.policy.retain}</td>
                  <td>{selectorText(s.clusters)}</td>
                  <td>{s.namespaces.join(', ')}</td>
                  <td>{s.locationName || s.location}</td>
                  <td>{s.paused ? <Badge state="Paused" /> : <Badge state="Active" />}</td>
                  <td>
                    {s.lastRun ? (
                      <span>
                        <Time at={s.lastRun.firedAt} /> · {s.lastRun.started} started
                        {s.lastRun.missed ? <strong class="text-bad"> · {s.lastRun.missed} missed</strong> : null}
                      </span>
                    ) : (
                      <span class="muted">never</span>
                    )}
                  </td>
                  <td>{s.paused ? <span class="muted">paused</span> : <Time at={s.nextFireMs} />}</td>
                  {operator && (
                    <td class="actions">
                      <button
                        type="button"
                        class="btn btn-small"
                        data-testid="schedule-edit"
                        aria-label={`Edit the policy of schedule ${s.id}`}
                        aria-expanded={editing === s.id}
                        onClick={() => setEditing(editing === s.id ? null : s.id)}
                      >
                        Edit
                      </button>{' '}
                      <button
                        type="button"
                        class="btn btn-small"
                        data-testid="schedule-toggle"
                        aria-label={`${s.paused ? 'Resume' : 'Pause'} schedule ${s.id}`}
                        onClick={() => act(() => put(orgPath(org, `/schedules/${enc(s.id)}`), { paused: !s.paused }))}
                      >
                        {s.paused ? 'Resume' : 'Pause'}
                      </button>{' '}
                      <ConfirmButton label="Delete" what={`schedule ${s.id}`} confirm={`Delete ${s.id}?`} testid="schedule-delete" onConfirm={() => act(() => del(orgPath(org, `/schedules/${enc(s.id)}`)))} />
                    </td>
                  )}
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
    </section>
  );
}
