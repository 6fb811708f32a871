/*
 * replay: a main() for the fuzz targets when they are built as ordinary
 * executables, so their corpora run as plain ctests in every build (the
 * normal one and the ASan+UBSan one) without clang or libFuzzer.
 *
 *   fuzz_<target>_replay PATH...
 *
 * Each PATH is a file (one input) or a directory (every regular file in it,
 * in name order; names starting with '.' are skipped, subdirectories are
 * not entered). Each input is read into a heap buffer of exactly its size,
 * so a harness or library that reads one byte too far trips ASan just as it
 * would under libFuzzer, and handed to LLVMFuzzerTestOneInput. If the target
 * defines LLVMFuzzerInitialize, it runs once first, as libFuzzer does.
 *
 * Exit status: 0 when every input ran; 1 when a path cannot be read or no
 * input was found at all (an empty or missing corpus is a broken test, not a
 * passing one). A failing input aborts inside the target, and the name of
 * the input is printed before it runs so the log says which one it was.
 */
#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv) __attribute__((weak));

/* Reads `path` into a malloc'd buffer of exactly its size (at least one
 * byte is allocated, so an empty file still yields a valid pointer). */
static int read_file(const char *path, uint8_t **out, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return -errno;
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || st.st_size < 0) {
        fclose(f);
        return -EIO;
    }
    size_t n = (size_t)st.st_size;
    uint8_t *p = malloc(n ? n : 1);
    if (p == NULL || fread(p, 1, n, f) != n) {
        free(p);
        fclose(f);
        return p == NULL ? -ENOMEM : -EIO;
    }
    fclose(f);
    *out = p;
    *len = n;
    return 0;
}

static int run_file(const char *path)
{
    uint8_t *data = NULL;
    size_t len = 0;
    int rc = read_file(path, &data, &len);
    if (rc != 0) {
        fprintf(stderr, "replay: cannot read %s: %s\n", path, strerror(-rc));
        return -1;
    }
    fprintf(stderr, "replay: %s (%zu bytes)\n", path, len);
    LLVMFuzzerTestOneInput(data, len);
    free(data);
    return 1;
}

static int skip_entry(const struct dirent *e)
{
    return e->d_name[0] != '.';
}

/* Runs every regular file directly in `dir`. Returns the number run, or -1. */
static int run_dir(const char *dir)
{
    struct dirent **names;
    int n = scandir(dir, &names, skip_entry, alphasort);
    if (n < 0) {
        fprintf(stderr, "replay: cannot list %s: %s\n", dir, strerror(errno));
        return -1;
    }
    int ran = 0, failed = 0;
    for (int i = 0; i < n; i++) {
        char path[4096];
        struct stat st;
        snprintf(path, sizeof(path), "%s/%s", dir, names[i]->d_name);
        if (stat(path, &st) == 0 && S_ISREG(st.st_mode)) {
            if (run_file(path) < 0)
                failed = 1;
            else
                ran++;
        }
        free(names[i]);
    }
    free(names);
    return failed ? -1 : ran;
}

int main(int argc, char **argv)
{
    if (LLVMFuzzerInitialize != NULL)
        LLVMFuzzerInitialize(&argc, &argv);
    int total = 0, failed = 0;
    for (int i = 1; i < argc; i++) {
        struct stat st;
        int n;
        if (stat(argv[i], &st) == 0 && S_ISDIR(st.st_mode))
            n = run_dir(argv[i]);
        else
            n = run_file(argv[i]);
        if (n < 0)
            failed = 1;
        else
            total += n;
    }
    if (total == 0)
        fprintf(stderr, "replay: no inputs found in the paths given\n");
    else
        fprintf(stderr, "replay: %d inputs ran without error\n", total);
    return failed || total == 0 ? 1 : 0;
}
