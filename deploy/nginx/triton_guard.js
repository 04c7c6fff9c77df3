// njs (nginx JavaScript) guard in front of Triton 2.51's HTTP endpoint.
//
// Triton 2.51's HTTP front end is aborted by single requests before any model code runs
// (benchmarks/results/reliability.md): a JSON tensor whose "shape" claims ~2^56 elements
// (std::bad_alloc) and JSON nested ~100000 levels deep (stack overflow). nginx limits the body
// size itself (client_max_body_size: 413); this check, run on the body nginx holds in memory,
// refuses with 400 before anything reaches Triton:
//   - JSON nested deeper than MAX_DEPTH (the inference JSON needs 4 levels, 7 with the data of
//     [n, 1, 256, 256] as nested arrays), or with more than MAX_STRUCTURE brackets and quotes;
//   - an input or output whose shape is not a list of non-negative integers, or whose element
//     count exceeds MAX_ELEMENTS (a batch of 8 images of 1 x 256 x 256 is 524288);
//   - a body nginx did not keep in memory (larger than client_body_buffer_size).
// With the binary tensor protocol only the JSON header (Inference-Header-Content-Length bytes)
// is scanned. A request that passes goes on unchanged (internal redirect to @triton).

const MAX_DEPTH = 16;
const MAX_ELEMENTS = 8 * 1 * 256 * 256;
// brackets and quotes in one request: a batch of 8 images as nested JSON arrays needs ~8300
const MAX_STRUCTURE = 65536;

function deeperThan(text, limit) {
    // The bracket skeleton first, with native regular expressions (a 7-MB JSON tensor of floats
    // reduces to a few characters): escape pairs go (inside a string they never end it and are
    // never structure; "\u005b" included), then everything but brackets and quotes. What is left
    // alternates between structure and strings that hold no quote.
    const skeleton = text.replace(/\\[\s\S]/g, '').replace(/[^\[\]{}"]+/g, '');
    if (skeleton.length > MAX_STRUCTURE) {
        return true; // no inference request has that much structure; scanning it costs the proxy
    }
    let depth = 0;
    let inString = false;
    for (let i = 0; i < skeleton.length; i++) {
        const c = skeleton.charCodeAt(i);
        if (c === 34) { // quote
            inString = !inString;
        } else if (inString) {
            continue;
        } else if (c === 91 || c === 123) { // [ {
            depth++;
            if (depth > limit) {
                return true;
            }
        } else { // ] }
            depth--;
        }
    }
    return false;
}

function shapeProblem(tensors, what) {
    if (tensors === undefined) {
        return null;
    }
    if (!Array.isArray(tensors)) {
        return `"${what}" is not a list`;
    }
    for (let k = 0; k < tensors.length; k++) {
        const t = tensors[k];
        if (t === null || typeof t !== 'object' || t.shape === undefined) {
            continue; // outputs need no shape; Triton reports what else is missing
        }
        if (!Array.isArray(t.shape) || t.shape.length > 8) {
            return `${what}[${k}].shape is not a list of at most 8 dimensions`;
        }
        let n = 1;
        for (let d = 0; d < t.shape.length; d++) {
            const v = t.shape[d];
            if (typeof v !== 'number' || !Number.isInteger(v) || v < 0) {
                return `${what}[${k}].shape holds ${JSON.stringify(v)}, not a non-negative integer`;
            }
            n *= v;
        }
        if (n > MAX_ELEMENTS) {
            return `${what}[${k}].shape ${JSON.stringify(t.shape)} claims ${n} elements, above ${MAX_ELEMENTS}`;
        }
    }
    return null;
}

function refuse(r, status, message) {
    r.headersOut['Content-Type'] = 'application/json';
    r.return(status, JSON.stringify({ error: `refused by the proxy: ${message}` }) + '\n');
}

function check(r) {
    const body = r.requestBuffer;
    if (body === undefined || body === null) {
        // no body (Triton answers that itself), or a body nginx wrote to a file: too large here
        if (r.headersIn['Content-Length'] && r.headersIn['Content-Length'] !== '0') {
            refuse(r, 413, 'request body larger than the proxy checks in memory');
            return;
        }
        r.internalRedirect('@triton');
        return;
    }
    let text;
    const headerLength = r.headersIn['Inference-Header-Content-Length'];
    if (headerLength !== undefined) {
        const n = Number(headerLength);
        if (!Number.isInteger(n) || n < 0 || n > body.length) {
            refuse(r, 400, 'Inference-Header-Content-Length is not a length within the body');
            return;
        }
        text = body.slice(0, n).toString();
    } else {
        text = body.toString();
    }
    if (deeperThan(text, MAX_DEPTH)) {
        refuse(r, 400, `JSON nested deeper than ${MAX_DEPTH} levels or with more than ${MAX_STRUCTURE} brackets`);
        return;
    }
    let request;
    try {
        request = JSON.parse(text);
    } catch (e) {
        refuse(r, 400, 'the request is not valid JSON');
        return;
    }
    if (request === null || typeof request !== 'object' || Array.isArray(request)) {
        refuse(r, 400, 'the request is not a JSON object');
        return;
    }
    const problem = shapeProblem(request.inputs, 'inputs');
    if (problem !== null) {
        refuse(r, 400, problem);
        return;
    }
    r.internalRedirect('@triton');
}

export default { check };
