// The worker side of the teaching view (teach.js): runs the library's analysis of a request
// (a recorded generation, then DiSA's three measurements per AR step) one step per call, so
// progress reaches the page and a new request or a cancel gets in between steps.
//
// Page → worker: {type:'teach', id, request, samples} and {type:'teachCancel'}.
// Worker → page: {type:'teach', id, phase:'generate'|'analyze', done, total} while it runs,
// {type:'teach', id, phase:'done', result, images} at the end (result: the analysis, src/web.rs
// `TeachResult`; images: [{width, height, pixels}] for j = 0..K steps done,
// the image so far at 2j and the completed image at 2j+1), or {type:'teach', id, phase:'error', message}.

let current = null; // id of the analysis in progress

const nextTick = () => new Promise((resolve) => setTimeout(resolve, 0));

export async function teach(session, data, post) {
  if (data.type === 'teachCancel') {
    current = null;
    session.teachCancel();
    return;
  }
  const { id, request, samples } = data;
  current = id;
  try {
    session.teachStart(request, samples);
    for (;;) {
      await nextTick(); // lets a generation, a cancel or a newer request in
      if (current !== id) return;
      const r = await session.teachStep();
      if (current !== id || r === null || r === undefined) return;
      if (r.phase === 'done') {
        current = null;
        const images = r.images || [];
        post({ type: 'teach', id, phase: 'done', result: r.result, images },
          images.map((im) => im.pixels.buffer));
        return;
      }
      post({ type: 'teach', id, phase: r.phase, done: r.done, total: r.total });
    }
  } catch (err) {
    if (current === id) current = null;
    post({ type: 'teach', id, phase: 'error', message: String(err && err.message ? err.message : err) });
  }
}
