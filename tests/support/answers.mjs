// What the worker adds to Kling's task data, taken off again, so a test can check that the
// rest is exactly Kling's: the `copies` object and the `copy_*` link beside each Kling link
// (README, "Results that outlive Kling").

/** Kling's own part of an answer or webhook body. */
export function klingPart(task) {
  const { copies: _copies, ...rest } = structuredClone(task);
  for (const kind of ['videos', 'audios']) {
    for (const item of rest.task_result?.[kind] ?? []) {
      for (const field of Object.keys(item)) {
        if (field.startsWith('copy_')) delete item[field];
      }
    }
  }
  return rest;
}
