/*
 * origin_helper: a library the test plugin `origin` needs, shipped beside
 * it and found through its RUNPATH $ORIGIN (the plugin's own directory).
 */
__attribute__((visibility("default"))) const char *origin_helper_word(void)
{
    return "found beside the plugin";
}
